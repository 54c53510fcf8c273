"""The models file as typed ``ModelSpec``s: the README's format parses, and every mistake is named readably."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.models.spec import ModelsFileError, ModelSpec, load_models_file, parse_spec


def test_readme_format_parses(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - {alias: mock-gpt, backend: openai, urls: ['http://127.0.0.1:18080/v1'], upstream_model: gpt-x,"
        " api_key_env: UPSTREAM_KEY}\n"
        "  - {alias: big, backend: tgi, url: 'http://tgi:80', max_concurrency: 128}\n"
        "  - {alias: local, backend: embedded, model: /models/my-finetune, classification: restricted,"
        " retain_content: true, defaults: {temperature: 0, max_tokens: 64}}\n"
    )
    mock, big, local = load_models_file(path)
    assert mock.endpoint_urls() == ["http://127.0.0.1:18080/v1"] and mock.api_key_env == "UPSTREAM_KEY"
    assert big.max_concurrency == 128 and big.endpoint_urls() == ["http://tgi:80"]
    assert local.attributes() == {"classification": "restricted", "owner": None, "retain_content": True}
    assert local.defaults is not None and local.defaults.temperature == 0.0 and local.defaults.max_tokens == 64
    assert ModelSpec(**{k: v for k, v in {**local.to_dict()}.items() if k != "defaults"}).alias == "local"


@pytest.mark.parametrize(("entry", "needle"), [
    ({"alias": "x", "backend": "tgi", "url": "http://a", "max_concurrency": "lots"},
     "models[0] ('x'): max_concurrency: Expected `int`, got `str`"),
    ({"alias": "x", "backend": "tgi", "url": "http://a", "max_concurrency": 0},
     "max_concurrency: Expected `int` >= 1"),
    ({"alias": "x", "backend": "openai", "url": "http://a", "retain_content": "yes"},
     "retain_content: Expected `bool`, got `str`"),
    ({"alias": "x", "backend": "openai", "url": "http://a", "urls": "http://b"}, "urls: Expected `array`"),
    ({"alias": "bad alias!", "backend": "openai", "url": "http://a"}, "alias may use letters"),
    ({"alias": "x", "backend": "openai", "url": "http://a", "api_key_env": "not a var"}, "name an environment"),
    ({"alias": "x", "backend": "openai", "url": "http://a", "api_key": "s"}, "unknown keys ['api_key']"),
])
def test_errors_name_the_entry_and_field(entry: dict, needle: str) -> None:
    with pytest.raises(ModelsFileError) as err:
        parse_spec(entry, "models[0]")
    assert needle in str(err.value)


def test_adapter_id_names_an_upstream_lora() -> None:
    tgi = parse_spec({"alias": "support", "backend": "tgi", "url": "http://tgi:80", "adapter_id": "acme/support-v2"})
    vllm = parse_spec({"alias": "s", "backend": "openai", "url": "http://v:8000/v1", "adapter_id": "sql-lora@3"})
    assert tgi.adapter_id == "acme/support-v2" and vllm.adapter_id == "sql-lora@3"
    assert tgi.to_dict()["adapter_id"] == "acme/support-v2"  # part of the version's spec (and digest)
    assert "adapter_id" not in parse_spec({"alias": "p", "backend": "tgi", "url": "http://t"}).to_dict()


@pytest.mark.parametrize(("extra", "needle"), [
    ({"adapter_id": ""}, "'adapter_id' must be 1..256"),
    ({"adapter_id": "a b"}, "'adapter_id' must be 1..256"),
    ({"adapter_id": "../etc"}, "'adapter_id' must be 1..256"),
    ({"adapter_id": "org/../etc"}, "'adapter_id' must be 1..256"),
    ({"adapter_id": "x" * 257}, "'adapter_id' must be 1..256"),
    ({"adapter_id": "lora\n"}, "'adapter_id' must be 1..256"),
    ({"adapter_id": 7}, "adapter_id: Expected `str | null`, got `int`"),
    ({"adapter_id": "lora", "upstream_model": "base"}, "set 'adapter_id' or 'upstream_model', not both"),
])
def test_adapter_id_is_validated(extra: dict, needle: str) -> None:
    with pytest.raises(ModelsFileError) as err:
        parse_spec({"alias": "x", "backend": "openai", "url": "http://a", **extra}, "models[0]")
    assert needle in str(err.value)


def test_adapter_id_is_for_upstreams_only() -> None:
    with pytest.raises(ModelsFileError, match="the embedded backend applies a peft folder"):
        parse_spec({"alias": "x", "backend": "embedded", "model": "/m", "adapter_id": "lora"})


@pytest.mark.parametrize("backend", ["tgi", "openai"])
def test_an_embedded_adapter_folder_on_an_upstream_is_refused_not_ignored(backend: str) -> None:
    with pytest.raises(ModelsFileError, match=f"a {backend} upstream's LoRA adapter is named with 'adapter_id'"):
        parse_spec({"alias": "x", "backend": backend, "url": "http://a", "adapter": "/adapters/lora"}, "models[0]")


def test_a_version_stored_before_the_refusal_still_serves_without_the_adapter() -> None:
    """Registered while `adapter` on an upstream was silently ignored: it still serves (and is still ignored), its
    stored spec and digest untouched."""
    from gateway.db.registry import ModelVersion
    from gateway.models.service import serving_spec

    stored = {"backend": "tgi", "url": "http://tgi:80", "adapter": "/adapters/lora"}
    v = ModelVersion(id="v1", kind="endpoint", spec=stored, artifact=None)  # the row as it was stored
    spec = serving_spec("support", v, None, None)
    assert spec.backend == "tgi" and spec.adapter is None and spec.endpoint_urls() == ["http://tgi:80"]
    assert stored["adapter"] == "/adapters/lora"
