"""Several LoRA adapters on one shared base vs each adapter merged into its own copy (same prompts, same run).

    python -m bench.multi_lora [--model builtin:smollm2] [--adapters 4] [--per-adapter 4] [--max-tokens 48]

Three ways to serve the same requests (``--adapters`` random rank-8 LoRA adapters on every projection, as a
``sft-lora`` run makes them; ``--per-adapter`` concurrent chat requests for each):

- ``merged``: each adapter merged into a private copy of the base (what Palisade did before; what a server that
  cannot mix adapters in a batch does): one engine and one batch per adapter, all competing for the same cores;
- ``shared``: every adapter on one shared base, all requests decoded together, each row with its adapter's delta;
- ``base``: the same number of requests to the base alone (the upper bound: no adapter work at all).

Reports tokens/s (median over interleaved rounds), the ratio shared/merged and shared/base, and the resident
memory each layout added (RSS after loading it minus before; ``base`` loads first, so ``shared`` adds only its
adapters to that base copy, while ``merged`` adds one full copy per adapter). Greedy answers of ``shared`` and
``merged`` must be identical (checked). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.embedded_batching import make_prompts  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def make_adapters(model: str, n: int, root: Path) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gateway.inference.embedded import resolve_model

    path, gguf = resolve_model(model, None)
    base = AutoModelForCausalLM.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS,
                                                     init_lora_weights=False), adapter_name=f"a{i}")
        with torch.no_grad():  # small, non-zero deltas: answers differ a little from the base, stay fluent
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)
        folder = root / f"adapter-{i}"
        peft_model.save_pretrained(folder, selected_adapters=[f"a{i}"])
        # save_pretrained puts a named adapter in a sub-folder
        sub = folder / f"a{i}"
        out.append(str(sub if sub.is_dir() else folder))
        base = peft_model.unload()
    return out


async def start(model: str, adapters: list[str | None], *, share: bool) -> list:
    from gateway.inference.embedded import EmbeddedBackend

    backends = []
    for i, a in enumerate(adapters):
        b = EmbeddedBackend(model, name=f"{'s' if share else 'm'}{i}", adapter=a, max_batch=32)
        b.share_base = share
        await b.start()
        backends.append(b)
    return backends


async def run(backends: list, prompts: list, max_tokens: int) -> tuple[float, int, list[str]]:
    from gateway.inference.base import GenerationRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    jobs = [b.generate(GenerationRequest(f"r{i}", params, messages=m))
            for b in backends for i, m in enumerate(prompts)]
    t0 = time.perf_counter()
    results = await asyncio.gather(*jobs)
    wall = time.perf_counter() - t0
    return wall, sum(r.usage.completion_tokens for r in results), [r.text for r in results]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--per-adapter", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import torch

    prompts = make_prompts(args.per_adapter)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = await asyncio.to_thread(make_adapters, args.model, args.adapters, Path(tmp))
        layouts: dict[str, list] = {}
        memory: dict[str, float] = {}
        for name, kind in (("base", None), ("shared", True), ("merged", False)):
            before = rss_mb()
            if kind is None:
                layouts[name] = await start(args.model, [None] * args.adapters, share=True)
            else:
                layouts[name] = await start(args.model, adapters, share=kind)
            memory[name] = rss_mb() - before
        assert len({id(b.engine) for b in layouts["shared"]}) == 1
        assert len({id(b.engine) for b in layouts["merged"]}) == args.adapters
        for bs in layouts.values():  # warm-up
            await run(bs, prompts[:1], 2)
        rounds: list[dict[str, float]] = []
        texts: dict[str, list[str]] = {}
        for r in range(args.rounds):
            row = {}
            for name, bs in layouts.items():
                wall, tokens, texts[name] = await run(bs, prompts, args.max_tokens)
                row[name] = tokens / wall
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in row.items()), flush=True)
        same = sum(a == b for a, b in zip(texts["shared"], texts["merged"], strict=True))
        for bs in layouts.values():
            for b in bs:
                await b.close()
    med = {k: statistics.median(row[k] for row in rounds) for k in rounds[0]}
    ratio_merged = statistics.median(row["shared"] / row["merged"] for row in rounds)
    ratio_base = statistics.median(row["shared"] / row["base"] for row in rounds)
    requests = args.adapters * args.per_adapter
    print(f"\n{args.adapters} adapters x {args.per_adapter} concurrent requests ({requests} in all), "
          f"{args.max_tokens} tokens max, {torch.get_num_threads()} threads, cpus {sorted(os.sched_getaffinity(0))}")
    print(f"{'layout':<40} {'tok/s':>8} {'RSS added':>10}")
    print(f"{'one base, no adapters (upper bound)':<40} {med['base']:>8.1f} {memory['base']:>8.0f} MB")
    print(f"{'adapters on that same shared base':<40} {med['shared']:>8.1f} {memory['shared']:>8.0f} MB")
    print(f"{'each adapter merged into its own copy':<40} {med['merged']:>8.1f} {memory['merged']:>8.0f} MB")
    print(f"shared / merged throughput {ratio_merged:.2f}x, shared / base {ratio_base:.2f}x; "
          f"greedy answers identical shared vs merged: {same}/{requests}")
    print(json.dumps({"bench": "multi_lora", "model": args.model, "adapters": args.adapters, "requests": requests,
                      "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
                      "rss_added_mb": {k: round(v) for k, v in memory.items()},
                      "shared_over_merged": round(ratio_merged, 2), "shared_over_base": round(ratio_base, 2),
                      "identical_answers": f"{same}/{requests}", "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    asyncio.run(main())
