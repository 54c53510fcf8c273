"""Several LoRA adapters on one shared base in the embedded backend: the same answers as each adapter merged into its
own copy (peft's merge_and_unload), one copy of the base, rows of different adapters decoded in the same step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.inference import embedded
from gateway.inference.base import GenerationRequest, SamplingParams
from gateway.inference.embedded import EmbeddedBackend

PROMPTS = ["Hello, world! How are you today?", "The quick brown fox", "Paris is the capital of France. Berlin is",
           "Once upon a time there was a small village"]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def req(prompt: str, n: int = 16) -> GenerationRequest:
    return GenerationRequest("t", SamplingParams(max_tokens=n, temperature=0.0), prompt=prompt)


def _adapter(base: Path, out: Path, seed: int, **config) -> Path:
    """A peft LoRA folder with random non-zero weights (init_lora_weights=False), as a trainer would save it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():  # large enough to change greedy answers of the random tiny model
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(20)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "all": _adapter(tiny_model_dir, root / "all", 1, r=4, lora_alpha=8, target_modules=ALL),
        "qv": _adapter(tiny_model_dir, root / "qv", 2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                       use_rslora=True),
        "mlp": _adapter(tiny_model_dir, root / "mlp", 3, r=2, lora_alpha=4, target_modules=["down_proj", "up_proj"]),
        "dora": _adapter(tiny_model_dir, root / "dora", 4, r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
    }


def _reference(base: Path, adapter: Path | None) -> list[str]:
    """Greedy answers of the base with ``adapter`` merged into its own copy (what the backend did before)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                 eos_token_id=stops, pad_token_id=0)[0, ids.shape[1]:].tolist()
            ends = [i for i, t in enumerate(gen) if t in stops]
            out.append(tok.decode(gen[: ends[0]] if ends else gen, skip_special_tokens=True))
    return out


@pytest.fixture(scope="module")
def references(tiny_model_dir: Path, adapters: dict[str, Path]) -> dict[str | None, list[str]]:
    refs: dict[str | None, list[str]] = {None: _reference(tiny_model_dir, None)}
    for name, path in adapters.items():
        refs[name] = _reference(tiny_model_dir, path)
    return refs


async def _start(tiny: Path, adapter: Path | None, name: str, **kw) -> EmbeddedBackend:
    b = EmbeddedBackend(str(tiny), name=name, adapter=str(adapter) if adapter else None, max_batch=16)
    for k, v in kw.items():
        setattr(b, k, v)
    await b.start()
    return b


@pytest.mark.parametrize("fast", [True, False], ids=["lean-decode", "transformers-forward"])
async def test_adapters_share_one_base_and_batch_together(tiny_model_dir, adapters, references, fast):
    base = await _start(tiny_model_dir, None, "base", use_fast_path=fast)
    mine = {n: await _start(tiny_model_dir, adapters[n], f"lora-{n}", use_fast_path=fast) for n in ("all", "qv", "mlp")}
    try:
        # one copy of the base weights, one decoding loop: every adapter is applied at run time on it
        assert all(b.engine is base.engine for b in mine.values())
        assert all(b.shares_base for b in mine.values()) and not base.shares_base
        assert (base._fast is not None) == fast
        assert len(base.engine.lora.adapters) == 3
        assert len({references[n][0] for n in (None, "all", "qv", "mlp")}) > 1, "adapters must change answers"

        mixed_before = base.stats["mixed_steps"]
        backends = {None: base, **mine}
        jobs = [(n, i, b.generate(req(p))) for n, b in backends.items() for i, p in enumerate(PROMPTS)]
        results = await asyncio.gather(*(j for _, _, j in jobs))
        for (n, i, _), r in zip(jobs, results, strict=True):
            assert r.text == references[n][i], f"adapter {n}, prompt {i}"
        # rows of the base and of different adapters went through the same forward passes
        assert base.stats["mixed_steps"] > mixed_before
    finally:
        for b in (*mine.values(), base):
            await b.close()
    assert base._engine is None and not await base.health()


async def test_adapter_leaves_the_base_when_its_backend_closes(tiny_model_dir, adapters, references):
    base = await _start(tiny_model_dir, None, "base2")
    one = await _start(tiny_model_dir, adapters["all"], "one")
    two = await _start(tiny_model_dir, adapters["all"], "two")  # the same folder: one adapter, two references
    engine = base.engine
    assert len(engine.lora.adapters) == 1 and one.engine is engine
    await one.close()
    assert len(engine.lora.adapters) == 1  # still referenced by `two`
    assert (await two.generate(req(PROMPTS[0]))).text == references["all"][0]
    # a stream in flight on `two` while another adapter version arrives and `two` is closed after it finished:
    three = await _start(tiny_model_dir, adapters["qv"], "three")
    stream = two.stream(req(PROMPTS[1]))
    text = "".join([d.text async for d in stream])
    assert text == references["all"][1]
    await two.close()
    assert list(engine.lora.adapters) == [three._adapter_name]
    assert (await base.generate(req(PROMPTS[2]))).text == references[None][2]
    assert (await three.generate(req(PROMPTS[2]))).text == references["qv"][2]
    await three.close()
    key = engine.key
    assert embedded._ENGINES.get(key) is engine
    await base.close()
    assert key not in embedded._ENGINES and engine.model is None  # the last backend freed the weights


async def test_dora_adapter_is_merged_into_a_private_copy(tiny_model_dir, adapters, references):
    base = await _start(tiny_model_dir, None, "base3")
    dora = await _start(tiny_model_dir, adapters["dora"], "dora")
    try:
        assert dora.engine is not base.engine and not dora.shares_base
        got = await asyncio.gather(*(dora.generate(req(p)) for p in PROMPTS))
        assert [g.text for g in got] == references["dora"]
    finally:
        await dora.close()
        await base.close()


async def test_adapter_that_does_not_fit_the_base_is_refused(tiny_model_dir, tmp_path):
    import json

    bad = tmp_path / "bad"
    bad.mkdir()
    import torch
    from safetensors.torch import save_file

    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 7),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)},
              str(bad / "adapter_model.safetensors"))
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                         "target_modules": ["q_proj"]}))
    base = await _start(tiny_model_dir, None, "base4")
    loaded = set(base.engine.lora.adapters)
    try:
        b = EmbeddedBackend(str(tiny_model_dir), name="bad", adapter=str(bad), max_batch=16)
        with pytest.raises(ValueError, match="shapes"):
            await b.start()
        assert set(base.engine.lora.adapters) == loaded
        assert (await base.generate(req(PROMPTS[0]))).text  # the base keeps serving
    finally:
        await base.close()
