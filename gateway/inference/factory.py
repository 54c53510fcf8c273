"""Backends from a model spec: the endpoints that serve one alias (not started).

The spec is the model domain's ``ModelSpec`` (``gateway.models.spec``); inference only reads the fields below
(a :class:`BackendSpec`), so the model domain can sit above it. Upstream keys never live in a spec:
``api_key_env`` names the environment variable that holds one.
"""

from __future__ import annotations

import os
from typing import Protocol

from gateway.inference.base import Backend
from gateway.settings import Settings


class ModelsFileError(ValueError):
    """A model spec cannot be served as written; the message names the entry and the problem."""


class BackendSpec(Protocol):
    alias: str
    backend: str
    model: str | None
    gguf_file: str | None
    adapter: str | None
    adapter_id: str | None
    upstream_model: str | None
    api_key_env: str | None
    device: str | None
    max_batch: int | None
    context_length: int | None

    def endpoint_urls(self) -> list[str]: ...


def _api_key(spec: BackendSpec) -> str | None:
    env = spec.api_key_env
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ModelsFileError(f"model {spec.alias!r}: environment variable {env} (api_key_env) is not set")
    return value


def build_backends(spec: BackendSpec, settings: Settings, *, name: str | None = None) -> list[Backend]:
    """The endpoints that serve ``spec`` (not started). ``name`` prefixes endpoint names (default: the alias)."""
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
                TGIBackend(url, name=ep_name, headers=headers, context_length=spec.context_length,
                           adapter_id=spec.adapter_id, **timeouts)
            )
        else:
            from gateway.inference.openai_upstream import OpenAIBackend

            backends.append(
                OpenAIBackend(
                    url,
                    name=ep_name,
                    # vLLM / SGLang name a LoRA adapter by the model field (the spec allows one of the two)
                    upstream_model=spec.adapter_id or spec.upstream_model,
                    api_key=key,
                    context_length=spec.context_length,
                    **timeouts,
                )
            )
    return backends
