"""Resumable checkpoints: trainable weights, optimizer, scheduler, every RNG state and the data position.

Layout of ``<run_dir>/checkpoint/`` (replaced atomically: written to a temporary folder, then renamed):
``weights.safetensors`` (only the parameters being trained: a LoRA adapter or the full model), ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` and ``state.json`` (step, epoch, position in the epoch, the loss history).
Everything is read back with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

DIRNAME = "checkpoint"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save(run_dir: Path, *, model: nn.Module, optimizer, scheduler, data_gen: torch.Generator,
         state: dict[str, Any]) -> Path:
    final = Path(run_dir) / DIRNAME
    tmp = Path(run_dir) / (DIRNAME + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "weights.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(data_gen), tmp / "rng.pt")
    (tmp / "python_rng.json").write_text(json.dumps(random.getstate()))
    (tmp / "state.json").write_text(json.dumps(state))
    old = Path(run_dir) / (DIRNAME + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def exists(run_dir: Path) -> bool:
    return (Path(run_dir) / DIRNAME / "state.json").exists()


def load(run_dir: Path, *, model: nn.Module, optimizer, scheduler, data_gen: torch.Generator) -> dict[str, Any]:
    """Restore everything in place; returns the saved loop state."""
    ckpt = Path(run_dir) / DIRNAME
    weights = load_file(ckpt / "weights.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    data_gen.set_state(rng["data"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    py = json.loads((ckpt / "python_rng.json").read_text())
    random.setstate((py[0], tuple(py[1]), py[2]))
    return json.loads((ckpt / "state.json").read_text())
