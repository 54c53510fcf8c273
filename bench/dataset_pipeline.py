"""Dataset pipeline throughput and memory: normalise + PII + quality filters + exact dedup, streamed on every
core (``trainer.datasets.prepare``) versus a plain single-process version written the obvious way (whole file in
memory, one list per stage, every detector on every text), on the same generated input; plus MinHash near-dedup.

Each variant runs in its own process, so its peak RSS (``ru_maxrss``, children included) is its own.

Run: ``python -m bench.dataset_pipeline [--mb 64] [--workers N] [--quick]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import resource
import tempfile
import time
import unicodedata
from pathlib import Path

WORDS = ("the people of this town often walk along the river in the morning when the light is soft and the water "
         "is calm while children play near the old school and their parents talk about work weather prices "
         "gardens football music books films holidays neighbours dinner recipes travel plans news").split()
PII = ["Schreiben Sie an erika.mustermann@beispiel.de oder rufen Sie +49 171 1234567 an.",
       "IBAN DE89 3704 0044 0532 0130 00, Karte 4111 1111 1111 1111.", "Login von 192.168.10.20 heute.",
       "Herr Schulze ist geboren am 12.03.1985.", ""]


def make_input(path: Path, megabytes: float, seed: int = 7) -> int:
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    size = 0
    last = ""
    with open(path, "w", encoding="utf-8") as fh:
        while size < target:
            if last and rng.random() < 0.05:
                line = last  # exact duplicates
            else:
                user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
                reply = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))
                rec = {"messages": [{"role": "user", "content": f"{user}. {rng.choice(PII)}"},
                                    {"role": "assistant", "content": reply}]}
                line = json.dumps(rec, ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode())
            last = line
    return size


def _rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024  # Linux: KiB


def plain(path: str) -> dict:
    """The obvious way: read everything, one list per stage, ftfy + every detector on every text."""
    import ftfy
    import phonenumbers

    from trainer.datasets import pii
    from trainer.datasets.filters import QualityFilter

    t = time.perf_counter()
    records = [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines() if line]

    def norm(text: str) -> str:
        return " ".join(unicodedata.normalize("NFC", ftfy.fix_text(text)).split())

    normalised = [{"messages": [{**m, "content": norm(m["content"])} for m in r["messages"]]} for r in records]

    def scrub(text: str) -> str:
        for pattern in (pii._EMAIL, pii._IBAN, pii._CARD, pii._TAX_ID, pii._IPV4, pii._IPV6, pii._TITLED,
                        pii._GIVEN_SURNAME):
            text = pattern.sub("[PII]", text)
        for m in reversed(list(phonenumbers.PhoneNumberMatcher(text, "DE"))):
            text = text[:m.start] + "[PHONE]" + text[m.end:]
        return text

    scrubbed = [{"messages": [{**m, "content": scrub(m["content"])} for m in r["messages"]]} for r in normalised]
    quality = QualityFilter()
    kept = [r for r in scrubbed if quality.reason("\n".join(m["content"] for m in r["messages"])) is None]
    seen, out = set(), []
    for r in kept:
        h = hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()
        if h not in seen:
            seen.add(h)
            out.append(r)
    return {"seconds": time.perf_counter() - t, "records_out": len(out), "rss_mb": _rss_mb()}


def streamed(path: str, workers: int) -> dict:
    from trainer.datasets.dedup import ExactDedup
    from trainer.datasets.filters import QualityConfig
    from trainer.datasets.ingest import IngestConfig, IngestReport, read_records
    from trainer.datasets.prepare import Preparer, prepared

    t = time.perf_counter()
    preparer = Preparer("redact", None, "DE", QualityConfig())
    exact = ExactDedup()
    out = 0
    for record, reason in prepared(read_records(Path(path), IngestConfig(), IngestReport()), preparer, workers,
                                   serial_records=0 if workers > 1 else 5000):
        if reason is None and not exact.is_duplicate(record):
            out += 1
    return {"seconds": time.perf_counter() - t, "records_out": out, "rss_mb": _rss_mb()}


def minhash(path: str, limit: int) -> dict:
    from trainer.datasets.dedup import NearDedup
    from trainer.datasets.ingest import IngestConfig, IngestReport, read_records

    near = NearDedup()
    size = n = 0
    t = time.perf_counter()
    for record in read_records(Path(path), IngestConfig(), IngestReport()):
        size += sum(len(m["content"].encode()) for m in record["messages"])
        near.is_duplicate(record)
        n += 1
        if n >= limit:
            break
    return {"seconds": time.perf_counter() - t, "records": n, "bytes": size, "rss_mb": _rss_mb()}


def _child(fn_name: str, args: tuple, queue: multiprocessing.Queue) -> None:
    queue.put(globals()[fn_name](*args))


def isolated(fn_name: str, *args: object) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=64.0, help="input size")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--minhash-records", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2 MB input, 2,000 MinHash records")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.minhash_records = 2.0, 2_000
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "input.jsonl")
        size = make_input(Path(path), args.mb)
        mb = size / 1024 / 1024
        base = isolated("plain", path)
        one = isolated("streamed", path, 1)
        many = isolated("streamed", path, args.workers)
        mh = isolated("minhash", path, args.minhash_records)
    # the plain version's cruder PII replacement can tip a duplicate pair apart: allow a hair of difference
    assert one["records_out"] == many["records_out"], (one, many)
    assert abs(base["records_out"] - one["records_out"]) <= max(2, one["records_out"] // 500), (base, one)
    rows = [("plain, 1 process (whole file in memory)", base, 1), ("streamed, 1 process", one, 1),
            (f"streamed, {args.workers} processes", many, args.workers)]
    print(f"input: {mb:.1f} MB, {base['records_out']} records kept\n")
    print(f"{'normalise+PII+filters+exact dedup':44} {'MB/s':>8} {'MB/s/core':>10} {'peak RSS MB':>12}")
    for name, r, cores in rows:
        print(f"{name:44} {mb / r['seconds']:8.2f} {mb / r['seconds'] / cores:10.2f} {r['rss_mb']:12.0f}")
    mh_mb = mh["bytes"] / 1024 / 1024
    print(f"{'MinHash LSH (112 perms, 5-gram), 1 process':44} {mh_mb / mh['seconds']:8.2f} "
          f"{mh_mb / mh['seconds']:10.2f} {mh['rss_mb']:12.0f}")
    print(f"\nspeed-up of {args.workers} processes over plain: {base['seconds'] / many['seconds']:.2f}x; "
          f"streamed single process over plain: {base['seconds'] / one['seconds']:.2f}x")
    print(json.dumps({
        "bench": "dataset_pipeline", "input_mb": round(mb, 2), "workers": args.workers,
        "plain_mb_s": round(mb / base["seconds"], 3), "streamed_mb_s": round(mb / one["seconds"], 3),
        "parallel_mb_s": round(mb / many["seconds"], 3),
        "parallel_mb_s_per_core": round(mb / many["seconds"] / args.workers, 3),
        "minhash_mb_s": round(mh_mb / mh["seconds"], 3),
        "rss_mb": {"plain": round(base["rss_mb"]), "streamed": round(one["rss_mb"]),
                   "parallel": round(many["rss_mb"]), "minhash": round(mh["rss_mb"])},
    }))


if __name__ == "__main__":
    main()
