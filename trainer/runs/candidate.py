"""Hand a finished run's output to the model registry as a candidate version.

The registry (``gateway/models``, ``Registry.register_version``) scans the artifact, records the evaluation
and the gates, and refuses to promote a candidate whose gates failed. ``register_candidate`` is the one place
that calls it; until the composition root passes a registry to the task, the candidate stays described on the
run row (``candidate``) and ``candidate_version`` is empty.
"""

from __future__ import annotations

from typing import Any

from trainer.evaluate.gates import as_registry_gates


def candidate_info(run, result: dict, gate_results: list[dict]) -> dict[str, Any]:
    registry_base = run.base if run.base and not run.base.startswith("preset:") and "/" not in run.base else None
    return {"name": f"run-{run.id[:12]}", "path": result.get("output_dir"), "files": result.get("files", {}),
            "base_version": registry_base, "base": run.base, "method": run.method,
            "eval_results": result.get("evaluation", {}),
            "eval_loss": result.get("eval_loss"), "perplexity": result.get("perplexity"),
            "gates_passed": all(g["passed"] for g in gate_results)}


async def register_candidate(registry, ctx, run, info: dict[str, Any], gate_results: list[dict]) -> str | None:
    """Register the output as a candidate version; returns its id (None when no registry is wired)."""
    if registry is None or not info.get("path"):
        return None
    version = await registry.register_version(
        ctx, info["name"], info["path"], requested_by=run.requester, run_id=run.id, base_version=info["base_version"],
        eval_results={"eval_loss": info["eval_loss"], "perplexity": info["perplexity"], **info["eval_results"]},
        gates=as_registry_gates(gate_results))
    return str(version.id)
