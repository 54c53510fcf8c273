"""Embedded inference batching vs plain ``model.generate`` one request at a time (same model, same prompts).

    python -m bench.embedded_batching [--model builtin:smollm2] [--requests N] [--max-tokens M]

Baseline: HF ``model.generate`` (greedy, same max_new_tokens, same end tokens), one prompt after another.
Then the EmbeddedBackend with the same prompts at concurrency 1 (one after another) and 8 (all at once),
and 64 on a GPU only. Prints a table (tokens/s and the ratio to the baseline) and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = [
    "a lighthouse keeper", "the history of bread", "how rainbows form", "a robot learning to paint",
    "why the sky is blue", "a trip to the mountains", "the rules of chess", "a cat who runs a bakery",
    "volcanoes", "the moon landing", "how bees make honey", "a friendly dragon", "the water cycle",
    "a library at midnight", "how a bicycle works", "an old pirate ship",
]


def make_prompts(n: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"Write a detailed paragraph about {TOPICS[i % len(TOPICS)]}."
                                     + (f" (variant {i // len(TOPICS)})" if i >= len(TOPICS) else "")}]
        for i in range(n)
    ]


def run_baseline(backend, prompts, max_tokens: int) -> tuple[float, int, list[list[int]]]:
    import torch

    model, tok = backend.model, backend.tokenizer
    stop_ids = sorted(backend.stop_token_ids)
    pad = stop_ids[0]
    outs, total = [], 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for msgs in prompts:
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids.to(backend.device)
            gen = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                eos_token_id=stop_ids, pad_token_id=pad, temperature=None, top_p=None, top_k=None,
            )
            new = gen[0, ids.shape[1]:].tolist()
            for j, t in enumerate(new):  # keep up to and including the first end token
                if t in backend.stop_token_ids:
                    new = new[: j + 1]
                    break
            outs.append(new)
            total += len(new)
    return time.perf_counter() - t0, total, outs


async def run_backend(backend, prompts, max_tokens: int, concurrency: int) -> tuple[float, int, list[str]]:
    from gateway.inference.base import GenerationRequest, SamplingParams

    sem = asyncio.Semaphore(concurrency)

    async def one(i, msgs):
        async with sem:
            params = SamplingParams(max_tokens=max_tokens, temperature=0)
            req = GenerationRequest(f"b{i}", params, messages=msgs)
            return await backend.generate(req)

    stats0 = dict(backend.stats)
    steps0 = backend.steps
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i, m) for i, m in enumerate(prompts)))
    wall = time.perf_counter() - t0
    d = {k: backend.stats[k] - stats0[k] for k in stats0}
    if os.environ.get("BENCH_VERBOSE"):
        print(f"  [c={concurrency}] wall {wall:.2f}s: prefill {d['prefill_s']:.2f}s ({d['prefills']}), "
              f"decode {d['step_s']:.2f}s ({backend.steps - steps0} steps, {d['step_rows']} rows)")
    return wall, sum(r.usage.completion_tokens for r in results), [r.text for r in results]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; ratios are medians")
    args = ap.parse_args()

    import torch

    from gateway.inference.embedded import EmbeddedBackend

    gpu = torch.cuda.is_available() and args.device in ("auto", "cuda") or args.device.startswith("cuda")
    backend = EmbeddedBackend(args.model, device=args.device, max_batch=64 if gpu else 16)
    t0 = time.perf_counter()
    await backend.start()
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f}s on {backend.device} "
          f"({torch.get_num_threads()} threads)")
    prompts = make_prompts(args.requests)
    # warm-up (first calls pay one-off costs on both paths)
    await run_backend(backend, prompts[:1], 4, 1)
    await asyncio.to_thread(run_baseline, backend, prompts[:1], 4)

    levels = [1, 8] + ([64] if gpu else [])
    prompts_for = {c: (prompts if c <= args.requests or c == 1 else make_prompts(c)) for c in levels}
    # Rounds interleave baseline and backend so that both see the same (shared, noisy) machine; the ratio is
    # taken within each round and the median across rounds is reported.
    per_round: list[dict[str, tuple[int, float]]] = []
    same: dict[int, str] = {}
    for r in range(args.rounds):
        row: dict[str, tuple[int, float]] = {}
        wall, tok, base_ids = await asyncio.to_thread(run_baseline, backend, prompts, args.max_tokens)
        row["base"] = (tok, wall)
        base_texts = [backend.tokenizer.decode(ids, skip_special_tokens=True) for ids in base_ids]
        for c in levels:
            wall, tok, texts = await run_backend(backend, prompts_for[c], args.max_tokens, c)
            row[f"c{c}"] = (tok, wall)
            if prompts_for[c] is prompts and r == 0:
                same[c] = f"{sum(a == b for a, b in zip(texts, base_texts, strict=True))}/{len(prompts)}"
        per_round.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {t / w:.1f} tok/s" for k, (t, w) in row.items()))
    device = str(backend.device)
    await backend.close()

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2

    base_tps = median([t / w for t, w in (row["base"] for row in per_round)])
    result = {"bench": "embedded_batching", "model": args.model, "device": device,
              "threads": torch.get_num_threads(), "requests": args.requests, "max_tokens": args.max_tokens,
              "rounds": args.rounds, "baseline_tokens_per_s": round(base_tps, 2)}
    print(f"\n{'path (median of rounds)':<36} {'conc':>5} {'tokens':>7} {'tok/s':>8} {'ratio':>6}")
    base_tok = per_round[0]["base"][0]
    print(f"{'hf generate, one at a time':<36} {1:>5} {base_tok:>7} {base_tps:>8.1f} {1.0:>6.2f}")
    for c in levels:
        tps = median([row[f"c{c}"][0] / row[f"c{c}"][1] for row in per_round])
        ratio = median([(row[f"c{c}"][0] / row[f"c{c}"][1]) / (row["base"][0] / row["base"][1])
                        for row in per_round])
        print(f"{f'embedded backend, concurrency {c}':<36} {c:>5} {per_round[0][f'c{c}'][0]:>7} "
              f"{tps:>8.1f} {ratio:>6.2f}")
        result[f"c{c}_tokens_per_s"] = round(tps, 2)
        result[f"c{c}_ratio"] = round(ratio, 2)
        if c in same:
            result[f"c{c}_same_text_as_baseline"] = same[c]
    if not gpu:
        print("GPU row (64 concurrent requests) skipped: no CUDA device")
    for c, v in same.items():
        print(f"greedy text identical to baseline at concurrency {c}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
