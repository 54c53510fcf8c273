"""Backends from the models file (``PALISADE_MODELS_FILE``), or the built-in embedded ``chat`` alias.

One entry::

    {alias: mock-gpt, backend: openai, url: "http://127.0.0.1:18080/v1", upstream_model: gpt-x,
     max_concurrency: 64, api_key_env: VLLM_KEY}
    {alias: big, backend: tgi, urls: ["http://tgi-a:80", "http://tgi-b:80"]}
    {alias: chat, backend: embedded, model: builtin:smollm2, gguf_file: null}

Upstream keys never live in the file: ``api_key_env`` names the environment variable that holds one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.inference.base import Backend
from gateway.models.spec import BACKENDS, ModelsFileError, ModelSpec, parse_spec
from gateway.models.spec import load_models_file as _load_specs
from gateway.settings import Settings

__all__ = ["BACKENDS", "ModelsFileError", "build_backends", "default_models", "load_models_file"]

def load_models_file(path: str | Path) -> list[dict[str, Any]]:
    """The models file as plain dicts (callers not yet on :class:`ModelSpec`)."""
    return [s.to_dict() for s in _load_specs(path)]


def validate_entry(spec: Any, where: str = "model entry") -> dict[str, Any]:
    return parse_spec(spec, where).to_dict()


def default_models(settings: Settings) -> list[dict[str, Any]]:
    return [
        {
            "alias": "chat",
            "backend": "embedded",
            "model": settings.embedded_model,
            "gguf_file": settings.embedded_gguf_file,
        }
    ]


def _api_key(spec: ModelSpec) -> str | None:
    env = spec.api_key_env
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ModelsFileError(f"model {spec.alias!r}: environment variable {env} (api_key_env) is not set")
    return value


def build_backends(spec: ModelSpec | dict[str, Any], settings: Settings, *, name: str | None = None) -> list[Backend]:
    """The endpoints that serve ``spec`` (not started). ``name`` prefixes endpoint names (default: the alias)."""
    if not isinstance(spec, ModelSpec):
        spec = parse_spec(spec)
    prefix = name or spec.alias
    timeouts = {
        "connect_timeout_s": settings.connect_timeout_s,
        "read_timeout_s": settings.read_timeout_s,
        "stream_idle_timeout_s": settings.stream_idle_timeout_s,
    }
    if spec.backend == "embedded":
        from gateway.inference.embedded import EmbeddedBackend

        return [
            EmbeddedBackend(
                spec.model or settings.embedded_model,
                name=f"{prefix}/embedded",
                gguf_file=spec.gguf_file if spec.model else (spec.gguf_file or settings.embedded_gguf_file),
                device=spec.device or settings.embedded_device,
                max_batch=int(spec.max_batch or settings.embedded_max_batch),
                adapter=spec.adapter,
            )
        ]
    urls = spec.endpoint_urls()
    key = _api_key(spec)
    backends: list[Backend] = []
    for i, url in enumerate(urls):
        ep_name = f"{prefix}/{i}" if len(urls) > 1 else prefix
        if spec.backend == "tgi":
            from gateway.inference.tgi import TGIBackend

            headers = {"Authorization": f"Bearer {key}"} if key else None
            backends.append(
                TGIBackend(url, name=ep_name, headers=headers, context_length=spec.context_length, **timeouts)
            )
        else:
            from gateway.inference.openai_upstream import OpenAIBackend

            backends.append(
                OpenAIBackend(
                    url,
                    name=ep_name,
                    upstream_model=spec.upstream_model,
                    api_key=key,
                    context_length=spec.context_length,
                    **timeouts,
                )
            )
    return backends
