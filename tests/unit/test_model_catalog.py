"""Sampling a request leaves out comes from the model: its generation_config, the built-in's recommended values,
or ``defaults:`` in the models file (validated with a readable error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.models.catalog import BUILTIN_DEFAULTS, sampling_defaults
from gateway.models.spec import ModelsFileError, load_models_file


def test_builtin_model_has_its_recommended_sampling():
    assert sampling_defaults({"backend": "embedded", "model": "builtin:smollm2"}) == BUILTIN_DEFAULTS
    assert BUILTIN_DEFAULTS["temperature"] <= 0.7  # a 135M model wanders at temperature 1


def test_generation_config_then_models_file_override(tmp_path: Path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6,
                                                                 "top_p": 0.95}))
    spec = {"backend": "embedded", "model": str(tmp_path)}
    assert sampling_defaults(spec) == {"temperature": 0.6, "top_p": 0.95}
    assert sampling_defaults({**spec, "defaults": {"temperature": 0.1, "max_tokens": 64}}) == {
        "temperature": 0.1, "top_p": 0.95, "max_tokens": 64}
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    assert sampling_defaults(spec) == {"temperature": 0.0}  # greedy, as the model's authors set it


def test_remote_models_take_defaults_from_the_file_only():
    assert sampling_defaults({"backend": "openai", "defaults": {"top_p": 0.5}}) == {"top_p": 0.5}
    assert sampling_defaults({"backend": "tgi"}) == {}


@pytest.mark.parametrize(("defaults", "needle"), [
    ("{temperature: 9}", "defaults.temperature must be a number within 0.0..2.0"),
    ("{top_k: 5}", "'defaults' may set only temperature, top_p, max_tokens"),
    ("[1]", "'defaults' may set only"),
])
def test_bad_defaults_are_refused_with_the_entry(tmp_path: Path, defaults: str, needle: str):
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - {{alias: m, backend: openai, url: 'http://x/v1', defaults: {defaults}}}\n")
    with pytest.raises(ModelsFileError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_models_file(path)
