"""The registry's rules on a real (SQLite) database and audit chain, and a replica's blue/green swap of tiny models.

Import refuses paths outside the import folder, symlinks and pickle; promotion is four-eyes with fresh MFA,
refused for a gate-failed candidate (unless a separate person overrides), bound to the digest; a tampered artifact
is refused with the old version still serving; a model that fails to load leaves the old one serving; a canary
at 20 % takes 20 % ± 5 % of 1,000 requests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gateway.audit.chain import AuditChain
from gateway.audit.events import Tag
from gateway.context import Principal
from gateway.crypto import open_keyring
from gateway.db.audit import AuditRecord
from gateway.db.base import utcnow
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.errors import BadRequest, Conflict, Forbidden
from gateway.inference.base import GenerationRequest, SamplingParams
from gateway.inference.router import Router
from gateway.models import artifacts
from gateway.models.catalog import ModelCatalog
from gateway.models.service import Registry, system_context
from gateway.models.spec import ModelSpec
from gateway.settings import Settings
from tests.support.tiny_model import make_tiny_model

# the fixtures' tasks (audit writer, router health) live on the session loop: run the tests on it too
pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Ctx:
    principal: Principal | None
    request_id: str = "test"
    mfa_at: datetime | None = None
    actor: str = "cli:test"


def person(name: str, *, mfa_age_s: float = 10) -> Ctx:
    at = utcnow() - timedelta(seconds=mfa_age_s)
    return Ctx(Principal(id=f"user:{name}", kind="user", name=name, auth_method="session", roles=("approver",),
                         mfa_at=at), mfa_at=at)


@pytest.fixture(scope="module")
def imports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imports")
    make_tiny_model(root / "a", seed=0)
    make_tiny_model(root / "b", seed=1)
    return root


@pytest.fixture
async def env(tmp_path: Path, imports: Path):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}", embedded_device="cpu",
                        embedded_max_batch=4, model_import_dirs=str(imports))
    await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
    signer = Ed25519PrivateKey.generate()
    router = Router(settings)
    sync = ModelCatalog(settings, db, router, chain)
    registry = sync.registry
    registry.trusted_keys = {"trainer": signer.public_key()}
    try:
        yield settings, db, registry, router, sync, signer, imports
    finally:
        await sync.close()
        await router.close()
        await chain.close()
        await db.close()


async def tags(db: Database) -> list[tuple[str, dict]]:
    async with db.session() as s:
        rows = (await s.execute(select(AuditRecord).order_by(AuditRecord.seq))).scalars()
        return [(r.tag, json.loads(r.details) if isinstance(r.details, str) else r.details) for r in rows]


async def test_import_refuses_traversal_symlinks_and_pickle(env, tmp_path: Path) -> None:
    _, _, registry, *_, imports = env
    cli = Ctx(None)
    with pytest.raises(BadRequest, match="outside"):
        await registry.import_model(cli, "x", path=tmp_path)
    with pytest.raises(BadRequest, match=r"'\.\.'"):
        await registry.import_model(cli, "x", path=imports / "a" / ".." / "b")
    link = imports / "link-out"
    if not link.exists():
        link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BadRequest, match="outside"):  # resolved before the check: the link leads out
        await registry.import_model(cli, "x", path=link)
    pickled = imports / "pickled"
    shutil.copytree(imports / "a", pickled, dirs_exist_ok=True)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(BadRequest, match="pickle"):
        await registry.import_model(cli, "x", path=pickled)
    inner = imports / "inner-link"
    shutil.copytree(imports / "a", inner, dirs_exist_ok=True)
    if not (inner / "extra.json").exists():
        (inner / "extra.json").symlink_to("/etc/hostname")
    with pytest.raises(BadRequest, match="symbolic links"):
        await registry.import_model(cli, "x", path=inner)
    v = await registry.import_model(cli, "tiny", path=imports / "a")
    assert v.status == "candidate" and v.kind == "transformers" and "model.safetensors" in v.files
    assert v.created_by == "cli:test"


async def test_promotion_rules_four_eyes_mfa_gates_override(env) -> None:
    _, db, registry, *_ = env
    importer = person("ivan")
    v = await registry.import_model(importer, "tiny", path=env[6] / "a")
    with pytest.raises(Forbidden, match="four-eyes"):  # self-approval
        await registry.promote(importer, "chat", v.id)
    with pytest.raises(Forbidden, match="multi-factor"):  # stale MFA (6 minutes)
        await registry.promote(person("alice", mfa_age_s=360), "chat", v.id)
    with pytest.raises(Forbidden, match="a person"):  # the CLI / an app cannot approve
        await registry.promote(Ctx(None), "chat", v.id)
    view = await registry.promote(person("alice"), "chat", v.id)
    assert view.version == v.id and view.generation == 1

    # a trained version that failed a gate: refused, until a separate person overrides, and then a third promotes
    failed = await registry.register_version(
        system_context("system:trainer"), "tiny", env[6] / "b", requested_by="user:rita", run_id="run-1",
        eval_results={"loss": 3.2}, gates={"toxicity": {"passed": False, "value": 0.4}, "loss": {"passed": True}},
    )
    assert failed.status == "candidate" and not failed.gates_passed
    with pytest.raises(Forbidden, match="failed its gates"):
        await registry.promote(person("alice"), "chat", failed.id)
    with pytest.raises(Forbidden, match="four-eyes"):  # the requester cannot override her own run's gates
        await registry.override_gates(person("rita"), failed.id, "accepted risk")
    await registry.override_gates(person("otto"), failed.id, "toxicity eval flaky; manual review done")
    with pytest.raises(Forbidden, match="overrode"):  # the overrider cannot also promote
        await registry.promote(person("otto"), "chat", failed.id)
    view = await registry.promote(person("alice"), "chat", failed.id)
    assert view.version == failed.id and view.previous_version == v.id and view.generation == 2

    back = await registry.rollback(person("alice"), "chat")
    assert back.version == v.id and back.generation == 3
    history = [(h.action, h.version) for h in await registry.history("chat")]
    assert history == [("promote", v.id), ("promote", failed.id), ("rollback", v.id)]
    shown = await registry.show("tiny")
    assert {x.id: x.status for x in shown.versions} == {v.id: "production", failed.id: "retired"}
    recorded = [t for t, _ in await tags(db)]
    for tag in (Tag.MODEL_IMPORT, Tag.MODEL_REGISTER, Tag.MODEL_PROMOTE, Tag.MODEL_PROMOTE_DENIED,
                Tag.MODEL_GATE_OVERRIDE, Tag.MODEL_ROLLBACK):
        assert tag in recorded, tag
    reasons = [d.get("reason", "") for t, d in await tags(db) if t == Tag.MODEL_PROMOTE_DENIED]
    assert any("four-eyes" in r for r in reasons) and any("multi-factor" in r for r in reasons)


async def test_signed_versions_verify_and_a_bad_signature_is_refused(env) -> None:
    _, _, registry, *_, signer, imports = env
    files = artifacts.scan(imports / "b", "transformers")
    dig = artifacts.digest("transformers", files, None, {"backend": "embedded"})
    good = await registry.register_version(system_context("system:trainer"), "signed", imports / "b",
                                           requested_by="user:rita", signature=artifacts.sign_digest(signer, dig),
                                           key_id="trainer")
    await registry.verify(good.id)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(BadRequest, match="signature"):
        await registry.register_version(system_context("system:trainer"), "signed", imports / "b",
                                        requested_by="user:rita", signature=artifacts.sign_digest(other, dig),
                                        key_id="trainer")


async def _serve_first(registry: Registry, sync: ModelCatalog, router: Router, imports: Path) -> str:
    v = await registry.import_model(person("ivan"), "tiny", path=imports / "a")
    await registry.promote(person("alice"), "chat", v.id)
    await sync.seed([])
    await router.start()
    sync.start_loading()
    await sync.wait_loaded()
    assert sync.get("chat").state == "ready"
    return v.id


async def settle(catalog: ModelCatalog) -> None:
    """Wait for the loads and swaps a refresh started, then refresh once more (canary rules follow loads)."""
    await asyncio.gather(*catalog._swaps.values(), *catalog._loads.values(), return_exceptions=True)
    await catalog.refresh()


async def ask(router: Router, alias: str = "chat") -> str | None:
    req = GenerationRequest("r", SamplingParams(max_tokens=3, temperature=0.0), prompt="Hello")
    return (await router.generate(alias, req)).model_version


async def test_tampered_artifact_refused_and_old_version_keeps_serving(env, tmp_path: Path) -> None:
    settings, db, registry, router, sync, _, imports = env
    first = await _serve_first(registry, sync, router, imports)
    copy = imports / f"tamper-{tmp_path.name}"
    shutil.copytree(imports / "b", copy)
    v2 = await registry.import_model(person("ivan"), "tiny", path=copy)
    with (copy / "model.safetensors").open("r+b") as fh:  # flip bytes in the weights after import
        fh.seek(200)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(Conflict, match="sha256 mismatch"):
        await registry.promote(person("alice"), "chat", v2.id)
    assert (await registry.get_version(v2.id)).status == "rejected"
    await sync.refresh()
    assert await ask(router) == first

    # tampered after approval: the replica refuses to load it, the old version keeps serving, audited
    copy3 = imports / f"late-{tmp_path.name}"
    shutil.copytree(imports / "b", copy3)
    v3 = await registry.import_model(person("ivan"), "tiny", path=copy3)
    await registry.promote(person("alice"), "chat", v3.id)
    (copy3 / "config.json").write_text((copy3 / "config.json").read_text().replace("64", "65", 1))
    await sync.refresh()
    await settle(sync)
    assert await ask(router) == first
    rejected = [d for t, d in await tags(db) if t == Tag.MODEL_ARTIFACT_REJECTED]
    assert {d.get("where") for d in rejected} >= {"approval", "load"}
    assert any("config.json" in d["reason"] for d in rejected if d.get("where") == "load")


async def test_failed_load_keeps_old_then_swap_frees_and_canary_split(env, tmp_path: Path) -> None:
    settings, db, registry, router, sync, _, imports = env
    first = await _serve_first(registry, sync, router, imports)
    broken = imports / f"broken-{tmp_path.name}"
    shutil.copytree(imports / "b", broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["hidden_size"] = 48  # weights no longer fit the architecture: the load fails
    (broken / "config.json").write_text(json.dumps(cfg))
    bad = await registry.import_model(person("ivan"), "tiny", path=broken)
    await registry.promote(person("alice"), "chat", bad.id)
    await sync.refresh()
    await settle(sync)
    assert await ask(router) == first
    assert any(t == Tag.MODEL_SWAP_FAILED for t, _ in await tags(db))

    # a good version swaps in while requests run; the old backend is closed (weights dropped) after it drains
    good = await registry.import_model(person("ivan"), "tiny", path=imports / "b")
    await registry.promote(person("alice"), "chat", good.id)
    old_backend = router._pools["chat"].endpoints[0].backend
    running = [asyncio.create_task(ask(router)) for _ in range(4)]
    await sync.refresh()
    await settle(sync)
    answered = await asyncio.gather(*running)
    assert set(answered) <= {first, good.id}
    assert await ask(router) == good.id
    for _ in range(100):
        if old_backend.model is None:
            break
        await asyncio.sleep(0.05)
    assert old_backend.model is None  # freed

    # canary: 20 % of 1,000 request ids go to the canary version, deterministically
    await registry.set_canary(person("alice"), "chat", first, percent=20)
    await sync.refresh()
    await settle(sync)
    await sync.refresh()  # the rule applies once the canary pool is loaded
    picks = [router.route_for("chat", principal="key:x", key=f"req-{i}") for i in range(1000)]
    share = picks.count("chat@canary") / 1000
    assert 0.15 <= share <= 0.25, share
    assert router.route_for("chat", principal="key:x", key="req-7") == picks[7]  # same request, same side
    await registry.set_canary(person("alice"), "chat", first, principals=["key:tester"])
    await sync.refresh()
    assert router.route_for("chat", principal="key:tester", key="z") == "chat@canary"
    assert router.route_for("chat", principal="key:other", key="z") == "chat"
    await registry.set_canary(person("alice"), "chat", None, percent=0)
    await sync.refresh()
    await settle(sync)
    assert router.canary("chat") is None and not router.has("chat@canary")


async def test_models_file_seed_is_idempotent_and_follows_edits(env) -> None:
    _, _, registry, *_ = env
    spec = ModelSpec(alias="mock", backend="openai", url="http://127.0.0.1:1/v1", upstream_model="m")
    await registry.seed([spec])
    await registry.seed([spec])
    (state,) = [s for s in await registry.serving_state() if s.name == "mock"]
    assert state.generation == 1 and state.spec is not None and state.spec.upstream_model == "m"
    await registry.seed([ModelSpec(alias="mock", backend="openai", url="http://127.0.0.1:1/v1", upstream_model="n")])
    (state,) = [s for s in await registry.serving_state() if s.name == "mock"]
    assert state.generation == 2 and state.spec.upstream_model == "n"



def _make_adapter(base: Path, out: Path, seed: int = 3) -> Path:
    """A peft LoRA adapter with random (non-zero) weights on the tiny model: its answers differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


async def test_lora_adapter_version_on_a_base_version(env, tmp_path: Path) -> None:
    _, _, registry, router, sync, _, imports = env
    base = await _serve_first(registry, sync, router, imports)
    adapter_dir = imports / f"adapter-{tmp_path.name}"
    await asyncio.to_thread(_make_adapter, imports / "a", adapter_dir)
    with pytest.raises(BadRequest, match="--base"):
        await registry.import_model(person("ivan"), "tiny-lora", path=adapter_dir)
    adapter = await registry.import_model(person("ivan"), "tiny-lora", path=adapter_dir, base=base)
    assert adapter.kind == "adapter" and adapter.base_version_id == base
    req = GenerationRequest("r", SamplingParams(max_tokens=6, temperature=0.0), prompt="Paris is the capital of")
    before = (await router.generate("chat", req)).text
    await registry.promote(person("alice"), "chat", adapter.id)
    await sync.refresh()
    await settle(sync)
    result = await router.generate("chat", req)
    assert result.model_version == adapter.id
    assert result.text != before  # the adapter's weights answer
    # served on the base already in memory (no second copy): the adapter is applied per row at run time
    (ep,) = router._pool("chat").endpoints
    engine = ep.backend.engine
    assert ep.backend.shares_base and engine.model_ref == str(imports / "a")
    # a second adapter version of the same base: swapped in beside the first on the same base, the first freed
    second_dir = imports / f"adapter2-{tmp_path.name}"
    await asyncio.to_thread(_make_adapter, imports / "a", second_dir, seed=4)
    second = await registry.import_model(person("ivan"), "tiny-lora", path=second_dir, base=base)
    await registry.promote(person("alice"), "chat", second.id)
    await sync.refresh()
    await settle(sync)
    await asyncio.gather(*router._drains)
    (ep,) = router._pool("chat").endpoints
    assert ep.backend.engine is engine and ep.backend.shares_base
    assert [a.path for a in engine.lora.adapters.values()] == [str(second_dir)]
    assert (await router.generate("chat", req)).model_version == second.id


def _make_medium(path: Path, seed: int) -> Path:
    """A ~30 MB model (the tiny tokenizer, wider layers): big enough that a leaked copy shows in RSS."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    make_tiny_model(path, seed=seed)
    cfg = json.loads((path / "config.json").read_text())
    config = LlamaConfig(**{**cfg, "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4,
                            "num_attention_heads": 6, "num_key_value_heads": 2})
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


async def test_repeated_swaps_free_the_old_weights(env, tmp_path: Path) -> None:
    """Four swaps between two ~30 MB models: RSS ends within one model copy (and 10 %) of where it started."""
    _, _, registry, router, sync, _, imports = env
    a = await asyncio.to_thread(_make_medium, imports / f"medium-a-{tmp_path.name}", 0)
    b = await asyncio.to_thread(_make_medium, imports / f"medium-b-{tmp_path.name}", 1)
    size_mb = (a / "model.safetensors").stat().st_size / 2**20
    assert size_mb > 20
    va = await registry.import_model(person("ivan"), "medium", path=a)
    vb = await registry.import_model(person("ivan"), "medium", path=b)
    await registry.promote(person("alice"), "chat", va.id)
    await sync.seed([])
    await router.start()
    sync.start_loading()
    await sync.wait_loaded()
    assert await ask(router) == va.id
    await asyncio.sleep(0.5)
    before = _rss_mb()
    for target in (vb, va, vb, va):
        if target is vb:
            await registry.promote(person("alice"), "chat", vb.id)
        else:
            await registry.rollback(person("alice"), "chat")
        await sync.refresh()
        await settle(sync)
        assert await ask(router) == target.id
    for _ in range(100):  # the last old copy is closed once its requests drained
        if not router._retired:
            break
        await asyncio.sleep(0.05)
    after = _rss_mb()
    assert after - before < size_mb, (before, after, size_mb)
    assert after <= before * 1.10, (before, after)
