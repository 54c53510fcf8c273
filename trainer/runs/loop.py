"""The one training loop every method shares.

    python -m trainer.runs.worker RUN_DIR     # runs this loop in its own process (see worker.py)

Reads top to bottom: place the model, build AdamW (no decay on biases and norms) and a warmup + cosine
schedule, restore a checkpoint if there is one, then take optimizer steps. Each step pulls ``grad_accum_steps``
micro-batches from an endless, seeded stream of (epoch, position) — epoch ``e`` visits the examples in
``randperm(n, seed + e)`` order — so a resumed run continues mid-epoch with exactly the batches the
uninterrupted run would have seen. bf16 autocast only on GPU; gradients clipped; the cancel callback is polled
after every step and a cancel saves a checkpoint first. Under torchrun (WORLD_SIZE > 1) the model is wrapped in
DDP, each rank takes its slice of every global batch, and rank 0 alone writes events and checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainer.methods.base import Batch, Prepared
from trainer.methods.configs import LoopConfig
from trainer.runs import checkpoint
from trainer.runs.events import EventWriter


@dataclass
class LoopResult:
    status: str  # succeeded | cancelled
    step: int
    total_steps: int
    losses: list[float]
    eval_loss: float | None = None
    perplexity: float | None = None
    tokens_per_s: float = 0.0
    evals: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup from 0, then cosine decay to ``min_ratio`` of the peak."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def micro_batches(n: int, per_batch: int, seed: int, epoch: int, position: int) -> Iterator[tuple[int, int, list[int]]]:
    """Endless stream of (epoch, position, indices), starting at (epoch, position); same order on every replay."""
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        batches = [order[i : i + per_batch] for i in range(0, n, per_batch)]
        while position < len(batches):
            yield epoch, position, batches[position]
            position += 1
        epoch, position = epoch + 1, 0


def count_tokens(batch: Batch) -> int:
    masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
    if masks:
        return int(sum(int(m.sum()) for m in masks))
    return int(batch["input_ids"].numel())


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def total_steps_for(cfg: LoopConfig, n_train: int, world: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * world))
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum_steps))


@torch.no_grad()
def evaluate_loss(prep: Prepared, model: nn.Module, cfg: LoopConfig, device: torch.device,
                  autocast) -> float | None:
    """Mean validation loss over at most ``eval_max_batches`` batches, in a fixed order with fixed masks."""
    if not prep.validation:
        return None
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    total, batches = 0.0, 0
    for i in range(0, len(prep.validation), cfg.batch_size):
        if batches >= cfg.eval_max_batches:
            break
        batch = to_device(prep.collate(prep.validation[i : i + cfg.batch_size], gen), device)
        with autocast():
            loss, _ = prep.loss(model, batch)
        total += float(loss)
        batches += 1
    model.train(was_training)
    return total / max(1, batches)


def train(prep: Prepared, cfg: LoopConfig, run_dir: Path, *, should_stop: Callable[[], bool] = lambda: False,
          events: EventWriter | None = None) -> LoopResult:
    run_dir = Path(run_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    events = events or EventWriter(run_dir / "events.jsonl", enabled=rank == 0)
    use_bf16 = cfg.bf16 and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else torch.autocast("cpu", enabled=False)

    # --- model -------------------------------------------------------------------------------------------
    model = prep.model.to(device)
    model.train()
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "config"):
            model.config.use_cache = False
    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None)
    if cfg.compile:
        step_model = torch.compile(step_model)

    # --- optimizer and schedule --------------------------------------------------------------------------
    total_steps = total_steps_for(cfg, len(prep.train), world)
    warmup = int(cfg.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, cfg.min_lr_ratio))
    data_gen = torch.Generator().manual_seed(cfg.seed)

    # --- resume ------------------------------------------------------------------------------------------
    step, epoch, position, losses, evals = 0, 0, 0, [], []
    if checkpoint.exists(run_dir):
        state = checkpoint.load(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, data_gen=data_gen)
        step, epoch, position = state["step"], state["epoch"], state["position"]
        losses, evals = state["losses"], state.get("evals", [])
        events.emit("resume", step=step, epoch=epoch, position=position)
    events.emit("start", total_steps=total_steps, step=step, world_size=world, device=device.type,
                train_examples=len(prep.train), validation_examples=len(prep.validation))

    def save_checkpoint() -> None:
        if rank == 0:
            checkpoint.save(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, data_gen=data_gen,
                            state={"step": step, "epoch": epoch, "position": position, "losses": losses,
                                   "evals": evals, "total_steps": total_steps})
            events.emit("checkpoint", step=step)

    def run_eval() -> dict:
        eval_loss = evaluate_loss(prep, model, cfg, device, autocast)
        rec = {"step": step, "eval_loss": eval_loss}
        if eval_loss is not None and prep.perplexity:
            rec["perplexity"] = math.exp(min(eval_loss, 50.0))
        evals.append(rec)
        events.emit("eval", **rec)
        return rec

    stream = micro_batches(len(prep.train), cfg.batch_size * world, cfg.seed, epoch, position)
    started, tokens_seen, status, first_step = time.perf_counter(), 0, "succeeded", step
    while step < total_steps:
        if should_stop():
            status = "cancelled"
            break
        t0 = time.perf_counter()
        step_loss_t, step_tokens = torch.zeros((), device=device), 0
        for _ in range(cfg.grad_accum_steps):
            epoch, position, idx = next(stream)
            position += 1  # the position to resume from is the next micro-batch
            mine = idx[rank * cfg.batch_size : (rank + 1) * cfg.batch_size] or idx[: cfg.batch_size]
            batch = to_device(prep.collate([prep.train[i] for i in mine], data_gen), device)
            with autocast():
                loss, _ = prep.loss(step_model, batch)
            (loss / cfg.grad_accum_steps).backward()
            step_loss_t += loss.detach().float() / cfg.grad_accum_steps  # on device: one sync per step, below
            step_tokens += count_tokens(batch)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        step_loss = float(step_loss_t)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            t = torch.tensor([step_loss], device=device)
            torch.distributed.all_reduce(t)
            step_loss = float(t) / world
        step += 1
        losses.append(step_loss)
        tokens_seen += step_tokens * world
        dt = time.perf_counter() - t0
        elapsed = time.perf_counter() - started
        events.emit("step", step=step, total_steps=total_steps, loss=step_loss, lr=lr, epoch=epoch,
                    tokens_per_s=step_tokens * world / max(dt, 1e-9),
                    eta_s=(total_steps - step) * elapsed / (step - first_step))
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            run_eval()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
            save_checkpoint()
    if status == "cancelled":
        save_checkpoint()
        final = evals[-1] if evals else {}
    else:
        final = run_eval()
    elapsed = time.perf_counter() - started
    return LoopResult(status=status, step=step, total_steps=total_steps, losses=losses,
                      eval_loss=final.get("eval_loss"), perplexity=final.get("perplexity"),
                      tokens_per_s=tokens_seen / max(elapsed, 1e-9), evals=evals)
