"""What a finished run leaves behind: a model card, the sha256 of every file, and how to reproduce it."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "optuna", "palisade")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under root (sorted)."""
    root = Path(root)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tree_digest(root: Path | str | None) -> str | None:
    """One digest of a whole directory (names and contents); None for presets or missing paths."""
    if not root or str(root).startswith("preset:") or not Path(root).is_dir():
        return None
    h = hashlib.sha256()
    for name, digest in sha256_tree(Path(root)).items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def write_manifest(out: Path) -> dict[str, str]:
    """Write ``SHA256SUMS`` (sha256sum's format, checkable with ``sha256sum -c``) and return the mapping."""
    sums = {k: v for k, v in sha256_tree(out).items() if k != "SHA256SUMS"}
    (Path(out) / "SHA256SUMS").write_text("".join(f"{d}  {name}\n" for name, d in sums.items()))
    return sums


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return versions


def code_version() -> str:
    """The git commit of the code that trained (plus ``-dirty``), or the package version outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,  # noqa: S603,S607
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],  # noqa: S603,S607
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "palisade-" + library_versions().get("palisade", "unknown")


def model_card(request: dict[str, Any], result: dict[str, Any]) -> str:
    cfg = json.dumps(result.get("config", {}), indent=2, sort_keys=True)
    evals = result.get("evaluation") or {}
    lines = [
        f"# {request.get('name') or 'Palisade candidate'}",
        "",
        f"- method: `{request['method']}`",
        f"- base: `{request.get('base') or 'from scratch'}`",
        f"- dataset digest: `{result['reproducibility'].get('dataset_digest')}`",
        f"- base digest: `{result['reproducibility'].get('base_digest')}`",
        f"- code version: `{result['reproducibility'].get('code_version')}`",
        f"- seed: {result['reproducibility'].get('seed')}",
        f"- steps: {result.get('step')}, final train loss: {result['losses'][-1] if result.get('losses') else None}",
        f"- validation loss: {result.get('eval_loss')}, perplexity: {result.get('perplexity')}",
        "",
        "## Evaluation",
        "```json",
        json.dumps(evals, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Configuration",
        "```json",
        cfg,
        "```",
        "",
        "## Libraries",
        "",
        *[f"- {k}: {v}" for k, v in result["reproducibility"].get("libraries", {}).items()],
        "",
        "Produced by a governed Palisade training run; weights are safetensors; `SHA256SUMS` lists every file.",
        "",
    ]
    return "\n".join(lines)
