"""The training process: ``python -m trainer.runs.worker RUN_DIR`` (or under ``torchrun``, one per GPU).

It is the only process that touches the accelerator. ``RUN_DIR/request.json`` says what to train::

    {"method": "sft-lora", "base": "/path/to/model" | "preset:tiny" | null, "config": {...},
     "dataset_dir": "/path/with/train.jsonl", "evaluation": {...optional...}}

It writes ``events.jsonl`` as it goes, ``checkpoint/`` every N steps and on cancel, ``output/`` (safetensors,
model card, SHA256SUMS) and ``result.json`` at the end. If ``checkpoint/`` exists it resumes from it.
Cancel: the file ``RUN_DIR/cancel`` (or SIGTERM) is checked after every step; the launcher kills after a grace
period. Exit codes: 0 succeeded, 3 cancelled, 1 failed (the ``end`` event carries the error).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
CANCEL_FILE = "cancel"


def run(run_dir: Path) -> int:
    from trainer.methods import trainer_module
    from trainer.methods.configs import config_for
    from trainer.runs import artifacts
    from trainer.runs.data import JsonlDatasetSource
    from trainer.runs.events import EventWriter
    from trainer.runs.loop import seed_everything, train

    run_dir = Path(run_dir)
    rank = int(os.environ.get("RANK", "0"))
    events = EventWriter(run_dir / "events.jsonl", enabled=rank == 0)
    request = json.loads((run_dir / "request.json").read_text())
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))

    def should_stop() -> bool:
        return stop["flag"] or (run_dir / CANCEL_FILE).exists()

    try:
        cfg = config_for(request["method"], request.get("config") or {})
        seed_everything(cfg.seed)
        source = JsonlDatasetSource(request["dataset_dir"])
        prep = trainer_module(request["method"]).prepare(cfg, request.get("base"), source, run_dir)
        result = train(prep, cfg, run_dir, should_stop=should_stop, events=events)
        out: dict = {**asdict(result), "config": asdict(cfg), "method": request["method"],
                     "reproducibility": {"seed": cfg.seed, "code_version": artifacts.code_version(),
                                         "libraries": artifacts.library_versions(),
                                         "dataset_digest": source.digest(),
                                         "base_digest": artifacts.tree_digest(request.get("base")),
                                         "base": request.get("base")}}
        if result.status == "cancelled":
            events.emit("end", status="cancelled", step=result.step)
            return EXIT_CANCELLED
        if rank == 0:
            output = run_dir / "output"
            prep.save(prep.model, output)
            if request.get("evaluation"):
                from trainer.evaluate.suite import evaluate_candidate

                out["evaluation"] = evaluate_candidate(prep, output, request["evaluation"], source)
            (output / "README.md").write_text(artifacts.model_card(request, out))
            out["files"] = artifacts.write_manifest(output)
            out["output_dir"] = str(output)
            (run_dir / "result.json").write_text(json.dumps(out, default=str))
            events.emit("end", status="succeeded", step=result.step, eval_loss=result.eval_loss,
                        perplexity=result.perplexity)
        return EXIT_OK
    except Exception as exc:  # the process boundary: report, never hang
        events.emit("end", status="failed", error=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return EXIT_FAILED


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m trainer.runs.worker RUN_DIR", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
