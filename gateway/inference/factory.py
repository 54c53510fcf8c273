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
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.inference.base import Backend
from gateway.settings import Settings

BACKENDS = ("embedded", "tgi", "openai")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_KNOWN_KEYS = {
    "alias",
    "backend",
    "url",
    "urls",
    "upstream_model",
    "max_concurrency",
    "api_key_env",
    "model",
    "gguf_file",
    "device",
    "max_batch",
    "context_length",
    # ABAC resource attributes (issue 4): data classification and owner of the model
    "classification",
    "owner",
    # keep prompts and completions of this model in the audit trail, encrypted (purpose "prompts")
    "retain_content",
    # sampling a request leaves out: {temperature, top_p, max_tokens} (as a model's generation_config)
    "defaults",
}
_DEFAULT_KEYS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "max_tokens": (1, 1_000_000)}


class ModelsFileError(ValueError):
    """The models file is malformed; raised at start with the entry and the problem."""


def _urls(spec: dict[str, Any]) -> list[str]:
    urls: list[Any] = []
    if spec.get("url"):
        urls.append(spec["url"])
    urls.extend(spec.get("urls") or [])
    return [str(u).rstrip("/") for u in urls]


def validate_entry(spec: Any, where: str = "model entry") -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ModelsFileError(f"{where}: must be a mapping")
    alias = spec.get("alias")
    if not alias or not isinstance(alias, str):
        raise ModelsFileError(f"{where}: missing 'alias'")
    where = f"{where} ({alias!r})"
    if not _ALIAS_RE.match(alias):
        raise ModelsFileError(f"{where}: alias may use letters, digits and . _ : / - (at most 128)")
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise ModelsFileError(f"{where}: unknown keys {sorted(unknown)}")
    backend = spec.get("backend")
    if backend not in BACKENDS:
        raise ModelsFileError(f"{where}: unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
    if not isinstance(spec.get("retain_content", False), bool):
        raise ModelsFileError(f"{where}: 'retain_content' must be true or false")
    if "urls" in spec and not isinstance(spec["urls"], list):
        raise ModelsFileError(f"{where}: 'urls' must be a list")
    if backend in ("tgi", "openai"):
        urls = _urls(spec)
        if not urls:
            raise ModelsFileError(f"{where}: missing 'url' (or 'urls') for backend {backend}")
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ModelsFileError(f"{where}: url {u!r} must start with http:// or https://")
    if "max_concurrency" in spec:
        mc = spec["max_concurrency"]
        if not isinstance(mc, int) or isinstance(mc, bool) or mc < 1:
            raise ModelsFileError(f"{where}: 'max_concurrency' must be a positive integer")
    defaults = spec.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - set(_DEFAULT_KEYS):
        raise ModelsFileError(f"{where}: 'defaults' may set only {', '.join(_DEFAULT_KEYS)}")
    for k, v in defaults.items():
        low, high = _DEFAULT_KEYS[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise ModelsFileError(f"{where}: defaults.{k} must be a number within {low}..{high}")
    key_env = spec.get("api_key_env")
    if key_env is not None and (
        not isinstance(key_env, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key_env)
    ):
        raise ModelsFileError(f"{where}: 'api_key_env' must name an environment variable")
    return spec


def load_models_file(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelsFileError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ModelsFileError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelsFileError(f"{path}: expected a mapping with a 'models' list")
    entries = [validate_entry(e, f"{path}: models[{i}]") for i, e in enumerate(data["models"])]
    seen: set[str] = set()
    for e in entries:
        if e["alias"] in seen:
            raise ModelsFileError(f"{path}: alias {e['alias']!r} appears twice")
        seen.add(e["alias"])
    return entries


def default_models(settings: Settings) -> list[dict[str, Any]]:
    return [
        {
            "alias": "chat",
            "backend": "embedded",
            "model": settings.embedded_model,
            "gguf_file": settings.embedded_gguf_file,
        }
    ]


def _api_key(spec: dict[str, Any]) -> str | None:
    env = spec.get("api_key_env")
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ModelsFileError(f"model {spec['alias']!r}: environment variable {env} (api_key_env) is not set")
    return value


def build_backends(spec: dict[str, Any], settings: Settings) -> list[Backend]:
    spec = validate_entry(spec)
    alias, kind = spec["alias"], spec["backend"]
    timeouts = {
        "connect_timeout_s": settings.connect_timeout_s,
        "read_timeout_s": settings.read_timeout_s,
        "stream_idle_timeout_s": settings.stream_idle_timeout_s,
    }
    context_length = spec.get("context_length")
    if kind == "embedded":
        from gateway.inference.embedded import EmbeddedBackend

        return [
            EmbeddedBackend(
                spec.get("model") or settings.embedded_model,
                name=f"{alias}/embedded",
                gguf_file=spec.get("gguf_file", settings.embedded_gguf_file),
                device=spec.get("device") or settings.embedded_device,
                max_batch=int(spec.get("max_batch") or settings.embedded_max_batch),
            )
        ]
    urls = _urls(spec)
    key = _api_key(spec)
    backends: list[Backend] = []
    for i, url in enumerate(urls):
        name = f"{alias}/{i}" if len(urls) > 1 else alias
        if kind == "tgi":
            from gateway.inference.tgi import TGIBackend

            headers = {"Authorization": f"Bearer {key}"} if key else None
            backends.append(
                TGIBackend(url, name=name, headers=headers, context_length=context_length, **timeouts)
            )
        else:
            from gateway.inference.openai_upstream import OpenAIBackend

            backends.append(
                OpenAIBackend(
                    url,
                    name=name,
                    upstream_model=spec.get("upstream_model"),
                    api_key=key,
                    context_length=context_length,
                    **timeouts,
                )
            )
    return backends
