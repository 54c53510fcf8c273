"""Several LoRA adapters served on one shared base model, applied per row of a batch.

A peft LoRA adapter adds ``scaling * B @ A`` to some linear layers of its base. Instead of merging each adapter into
its own copy of the base (one base copy per adapter), the embedded backend keeps one base in memory and adds each
row's adapter delta at run time, for every adapter in the batch at once (the idea of Punica / S-LoRA, on plain
matmuls): for a layer, the A matrices of all loaded adapters are stacked into one ``[K, in]`` matrix and the B
matrices (scaling folded in) into one ``[out, K]``; a row's delta is ``((x @ A_all.T) * mask_row) @ B_all.T`` where
``mask_row`` keeps only the rank columns of that row's adapter. Three small ops per layer whatever the mix of
adapters in the batch; a batch with no adapted row skips them entirely.

Adapters come as peft folders (``adapter_config.json`` parsed by peft's ``LoraConfig``, weights from
``adapter_model.safetensors`` only, never a pickle). What cannot be applied as a pure low-rank delta on linear layers
(DoRA, trainable embeddings or ``modules_to_save``, LoRA biases, layer replication) is reported by
:func:`unshareable`; the backend then merges that adapter into a private base copy instead.

Everything here runs on the embedded backend's worker thread, except :func:`read_adapter` (file reading).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PREFIX = "base_model.model."
_WEIGHTS = "adapter_model.safetensors"


def unshareable(path: str) -> str | None:
    """Why the adapter at ``path`` cannot be served on a shared base (None: it can)."""
    try:
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"adapter_config.json unreadable: {exc}"
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        return f"peft type {cfg.get('peft_type')} is not LoRA"
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"), ("layer_replication",
                     "layer replication"), ("trainable_token_indices", "trainable tokens"), ("lora_bias", "LoRA bias"),
                     ("alora_invocation_tokens", "activated LoRA")):
        if cfg.get(key):
            return f"{why} is not a low-rank delta on linear layers"
    if cfg.get("bias", "none") != "none":
        return f"bias={cfg.get('bias')!r} trains biases of the base"
    if not (Path(path) / _WEIGHTS).is_file():
        return f"{_WEIGHTS} missing"
    return None


@dataclass(slots=True)
class Adapter:
    """One adapter's deltas: module path -> (A ``[r, in]``, B ``[out, r]`` with its scaling folded in)."""

    name: str
    path: str
    deltas: dict[str, tuple[Any, Any]]

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.deltas.values())


def read_adapter(
    name: str, path: str, linear_shapes: dict[str, tuple[int, int]], *, dtype: Any, device: Any
) -> Adapter:
    """Read a peft LoRA folder against the base's linear layers (``path -> (out, in)``); ValueError if it does not
    fit."""
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    why = unshareable(path)
    if why:
        raise ValueError(f"adapter {path}: {why}")
    cfg = LoraConfig.from_pretrained(path)
    tensors = load_file(str(Path(path) / _WEIGHTS), device="cpu")
    pairs: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        module, _, kind = key.removeprefix(_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValueError(f"adapter {path}: unexpected tensor {key}")
        pairs.setdefault(module, {})[kind[0]] = t
    deltas: dict[str, tuple[Any, Any]] = {}
    alpha_pattern = dict(getattr(cfg, "alpha_pattern", None) or {})
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {path}: {module} lacks lora_A or lora_B")
        if module not in linear_shapes:
            raise ValueError(f"adapter {path}: the base has no linear layer {module}")
        a, b = ab["A"], ab["B"]
        out_f, in_f = linear_shapes[module]
        r = a.shape[0]
        if a.shape != (r, in_f) or b.shape != (out_f, r):
            raise ValueError(f"adapter {path}: {module} has shapes {tuple(a.shape)}/{tuple(b.shape)}, "
                             f"the base layer is {out_f}x{in_f}")
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), cfg.lora_alpha)
        scaling = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        deltas[module] = (a.to(device=device, dtype=dtype).contiguous(),
                          (b.float() * scaling).to(device=device, dtype=dtype).contiguous())
    if not deltas:
        raise ValueError(f"adapter {path}: no LoRA weights")
    return Adapter(name=name, path=path, deltas=deltas)


@dataclass(slots=True)
class Table:
    """The stacked deltas of every adapter for one group of layers whose outputs are concatenated."""

    a: Any  # [K, in]
    b: Any  # [out, K]
    owner: Any  # [K] long: the adapter slot (1-based) each rank column belongs to


class LoraSet:
    """The adapters loaded on one base, their slots, and the stacked tables the decode step applies."""

    def __init__(self) -> None:
        self.adapters: dict[str, Adapter] = {}
        self.slot: dict[str, int] = {}  # adapter name -> 1-based slot (0 is the base)
        self._tables: dict[tuple[str, ...], Table | None] = {}
        self._owners: dict[tuple[int, ...], Any] = {}
        self._rows: Any = None  # the current forward's per-row slots (set around a transformers forward)
        self._masks: dict[int, Any] = {}
        self.version = 0  # bumped on every change (FastLlama re-reads its tables)

    def __bool__(self) -> bool:
        return bool(self.adapters)

    def add(self, adapter: Adapter) -> None:
        self.adapters[adapter.name] = adapter
        self._changed()

    def remove(self, name: str) -> None:
        if self.adapters.pop(name, None) is not None:
            self._changed()

    def modules(self) -> set[str]:
        return {m for a in self.adapters.values() for m in a.deltas}

    def _changed(self) -> None:
        self.slot = {name: i + 1 for i, name in enumerate(self.adapters)}
        self._tables.clear()
        self._owners.clear()
        self.version += 1

    # ------------------------------------------------------------------ tables
    def table(self, group: tuple[str, ...], outs: tuple[int, ...]) -> Table | None:
        """The stacked deltas for layers ``group`` whose outputs (sizes ``outs``) are concatenated, or None when no
        adapter touches them."""
        if group in self._tables:
            return self._tables[group]
        import torch

        a_parts, b_cols, owners = [], [], []
        total = sum(outs)
        for name, adapter in self.adapters.items():
            offset = 0
            for module, out in zip(group, outs, strict=True):
                d = adapter.deltas.get(module)
                if d is not None:
                    a, b = d
                    col = b.new_zeros((total, b.shape[1]))
                    col[offset:offset + out] = b
                    a_parts.append(a)
                    b_cols.append(col)
                    owners.extend([self.slot[name]] * a.shape[0])
                offset += out
        if not a_parts:
            self._tables[group] = None
            return None
        key = tuple(owners)
        owner = self._owners.get(key)
        if owner is None:  # shared between groups with the same layout, so one mask serves them all
            owner = self._owners[key] = torch.tensor(owners, device=a_parts[0].device)
        table = Table(a=torch.cat(a_parts, 0).contiguous(), b=torch.cat(b_cols, 1).contiguous(), owner=owner)
        self._tables[group] = table
        return table

    # ------------------------------------------------------------------ per-row application
    def rows(self, names: list[str | None], device: Any) -> Any:
        """Per-row slots for a batch (None when no row has an adapter: nothing to add)."""
        if not self.adapters or not any(names):
            return None
        import torch

        return torch.tensor([self.slot[n] if n else 0 for n in names], device=device)

    def delta(self, table: Table, x: Any, rows: Any) -> Any:
        """``x`` ``[B, T, in]`` -> the rows' deltas ``[B, T, out]`` (zero for base rows)."""
        mask = self._masks.get(id(table.owner))
        if mask is None:
            mask = self._masks[id(table.owner)] = (rows[:, None] == table.owner[None, :]).to(x.dtype)[:, None, :]
        return ((x @ table.a.T) * mask) @ table.b.T

    @contextmanager
    def applying(self, rows: Any):
        """Around one batch's forward: masks are computed once per layout and reused by every layer."""
        self._rows, self._masks = rows, {}
        try:
            yield
        finally:
            self._rows, self._masks = None, {}


class Hooks:
    """Forward hooks on the base's linear layers that add the current rows' deltas (the transformers forward path:
    prefill, and decoding of architectures without the lean decode step)."""

    def __init__(self, model: Any, lora: LoraSet) -> None:
        self.model = model
        self.lora = lora
        self._handles: dict[str, Any] = {}

    def sync(self) -> None:
        """Hook exactly the layers some loaded adapter touches."""
        want = self.lora.modules()
        for module in set(self._handles) - want:
            self._handles.pop(module).remove()
        for module in want - set(self._handles):
            layer = self.model.get_submodule(module)
            shape = (layer.out_features,)
            self._handles[module] = layer.register_forward_hook(self._hook(module, shape))

    def _hook(self, module: str, outs: tuple[int, ...]) -> Any:
        lora = self.lora

        def hook(_layer: Any, args: tuple[Any, ...], output: Any) -> Any:
            rows = lora._rows
            if rows is None:
                return None
            table = lora.table((module,), outs)
            if table is None:
                return None
            return output + lora.delta(table, args[0], rows)

        return hook


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """``module path -> (out, in)`` of every linear layer of ``model`` (the paths peft adapters name)."""
    import torch

    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}
