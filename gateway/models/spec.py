"""How one model alias is served: a typed :class:`ModelSpec`, parsed from the models file with readable errors.

The models file (``PALISADE_MODELS_FILE``) seeds the registry at start; each entry becomes a version of kind
``endpoint`` that its alias points at. The same struct describes how an imported or trained version is served
(``backend: embedded`` with the artifact as ``model``), so the router is always fed from one shape::

    models:
      - {alias: mock-gpt, backend: openai, url: "http://127.0.0.1:18080/v1", upstream_model: gpt-x,
         max_concurrency: 64, api_key_env: VLLM_KEY}
      - {alias: big, backend: tgi, urls: ["http://tgi-a:80", "http://tgi-b:80"]}
      - {alias: support, backend: tgi, url: "http://tgi-lora:80", adapter_id: acme/support-lora-v2}
      - {alias: chat, backend: embedded, model: builtin:smollm2, defaults: {temperature: 0.2, max_tokens: 256}}

Upstream keys never live in the file: ``api_key_env`` names the environment variable that holds one.
Errors name the entry and the field (``models[1] ('big'): max_concurrency: Expected `int`, got `str```), because
the file is written by hand and read at start, where a stack trace helps nobody.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from gateway.inference.factory import ModelsFileError

__all__ = ["BACKENDS", "ModelSpec", "ModelsFileError", "SamplingDefaults", "load_models_file", "parse_spec"]
Backend = Literal["embedded", "tgi", "openai"]
BACKENDS: tuple[str, ...] = ("embedded", "tgi", "openai")
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
#: an upstream LoRA adapter's name: a Hugging Face repo id (``org/name``), a vLLM/SGLang ``--lora-modules`` name
ADAPTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


#: sampling a request may leave out, and the range a default may take
DEFAULT_RANGES: dict[str, tuple[float, float]] = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
                                                   "max_tokens": (1, 1_000_000)}


class SamplingDefaults(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Sampling parameters a request leaves out come from here (as vLLM uses a model's ``generation_config``)."""

    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One served alias: which backend, where, and the attributes ABAC and the audit trail read."""

    alias: str
    backend: Backend
    #: upstream address(es) for tgi / openai; several = one pool, least-busy first
    url: str | None = None
    urls: list[str] = msgspec.field(default_factory=list)
    #: embedded: a transformers folder, ``builtin:smollm2``, or the folder holding ``gguf_file``
    model: str | None = None
    gguf_file: str | None = None
    #: embedded: a peft LoRA adapter folder applied on ``model``
    adapter: str | None = None
    #: tgi / openai: the LoRA adapter the upstream serves this alias with. TGI gets it as ``parameters.adapter_id``
    #: (``/generate``, ``/generate_stream``) and as ``model`` on its Messages API; an OpenAI-compatible server
    #: (vLLM, SGLang) as ``model``, so it cannot be set together with ``upstream_model``. Two versions that differ
    #: only here are two versions: an alias switches adapters on the same endpoints like any other swap.
    adapter_id: str | None = None
    #: openai: the ``model`` sent upstream (default: none, the server's only model)
    upstream_model: str | None = None
    api_key_env: str | None = None
    max_concurrency: PositiveInt = 64
    device: str | None = None
    max_batch: PositiveInt | None = None
    context_length: PositiveInt | None = None
    #: ABAC resource attributes: data classification and owner of the model
    classification: str = "internal"
    owner: str | None = None
    #: keep prompts and completions of this model in the audit trail, encrypted (purpose "prompts")
    retain_content: bool = False
    defaults: SamplingDefaults | None = None

    def __post_init__(self) -> None:
        if not ALIAS_RE.match(self.alias):
            raise ValueError("alias may use letters, digits and . _ : / @ - (at most 128)")
        if self.backend in ("tgi", "openai"):
            if not self.endpoint_urls():
                raise ValueError(f"missing 'url' (or 'urls') for backend {self.backend}")
            for u in self.endpoint_urls():
                if not u.startswith(("http://", "https://")):
                    raise ValueError(f"url {u!r} must start with http:// or https://")
        if self.adapter is not None and self.backend != "embedded":
            raise ValueError(f"'adapter' is a peft folder the embedded backend applies; a {self.backend} upstream's "
                             "LoRA adapter is named with 'adapter_id'")
        if self.adapter_id is not None:
            if self.backend == "embedded":
                raise ValueError("'adapter_id' names an upstream's adapter (tgi, openai); the embedded backend "
                                 "applies a peft folder given as 'adapter'")
            if not ADAPTER_ID_RE.fullmatch(self.adapter_id) or ".." in self.adapter_id.split("/"):
                raise ValueError("'adapter_id' must be 1..256 of letters, digits and . _ : / @ + - "
                                 "(starting with a letter or digit, no '..' segment)")
            if self.upstream_model is not None:
                raise ValueError("set 'adapter_id' or 'upstream_model', not both: an OpenAI-compatible server "
                                 "names the adapter by the model field")
        if self.api_key_env is not None and not _ENV_RE.match(self.api_key_env):
            raise ValueError("'api_key_env' must name an environment variable")

    def endpoint_urls(self) -> list[str]:
        urls = ([self.url] if self.url else []) + list(self.urls)
        return [str(u).rstrip("/") for u in urls]

    def attributes(self) -> dict[str, Any]:
        """What ABAC and /v1/models see of this alias."""
        return {"classification": self.classification, "owner": self.owner, "retain_content": self.retain_content}

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    def with_alias(self, alias: str) -> ModelSpec:
        return msgspec.structs.replace(self, alias=alias)


_KNOWN_KEYS = frozenset(ModelSpec.__struct_fields__)


def parse_spec(entry: Any, where: str = "model entry") -> ModelSpec:
    """One entry (a mapping) as a :class:`ModelSpec`, or :class:`ModelsFileError` naming what is wrong."""
    if not isinstance(entry, dict):
        raise ModelsFileError(f"{where}: must be a mapping")
    alias = entry.get("alias")
    if not alias or not isinstance(alias, str):
        raise ModelsFileError(f"{where}: missing 'alias'")
    where = f"{where} ({alias!r})"
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise ModelsFileError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(_KNOWN_KEYS))})")
    if entry.get("backend") not in BACKENDS:
        raise ModelsFileError(
            f"{where}: unknown backend {entry.get('backend')!r} (use one of {', '.join(BACKENDS)})"
        )
    defaults = entry.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(DEFAULT_RANGES):
        raise ModelsFileError(f"{where}: 'defaults' may set only {', '.join(DEFAULT_RANGES)}")
    for k, v in defaults.items():
        low, high = DEFAULT_RANGES[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise ModelsFileError(f"{where}: defaults.{k} must be a number within {low}..{high}")
    try:
        return msgspec.convert(entry, ModelSpec, strict=True)
    except msgspec.ValidationError as exc:
        raise ModelsFileError(f"{where}: {_readable(exc)}") from None


def _readable(exc: msgspec.ValidationError) -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.max_concurrency```; we say ``max_concurrency: ...``."""
    text = str(exc)
    m = re.match(r"^(.*) - at `\$\.?(.*)`$", text, re.S)
    if m:
        return f"{m.group(2) or 'entry'}: {m.group(1)}"
    return text


def parse_models(data: Any, where: str = "models file") -> list[ModelSpec]:
    """The ``models:`` list of a parsed YAML document; aliases must be unique."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelsFileError(f"{where}: expected a mapping with a 'models' list")
    specs = [parse_spec(e, f"{where}: models[{i}]") for i, e in enumerate(data["models"])]
    seen: set[str] = set()
    for s in specs:
        if s.alias in seen:
            raise ModelsFileError(f"{where}: alias {s.alias!r} appears twice")
        seen.add(s.alias)
    return specs


def load_models_file(path: str | Path) -> list[ModelSpec]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelsFileError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ModelsFileError(f"{path}: not valid YAML ({exc})") from None
    return parse_models(data, str(path))


def default_specs(embedded_model: str, gguf_file: str | None) -> list[ModelSpec]:
    """Without a models file: the alias ``chat`` on the embedded backend (its sampling defaults come from the
    model: see ``gateway.models.catalog.sampling_defaults``)."""
    return [ModelSpec(alias="chat", backend="embedded", model=embedded_model, gguf_file=gguf_file)]


def model_specs(settings: Any) -> list[ModelSpec]:
    """The models file's entries (``PALISADE_MODELS_FILE``), or the built-in ``chat`` alias."""
    if settings.models_file:
        return load_models_file(settings.models_file)
    return default_specs(settings.embedded_model, settings.embedded_gguf_file)
