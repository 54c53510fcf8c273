"""Model artifacts on disk: where an import may come from, which files are allowed, and proof they are unchanged.

An artifact is a transformers folder, a GGUF file or a peft adapter folder. Weights must be ``.safetensors`` or
``.gguf``: pickle formats (``.bin``, ``.pt``, ``.pkl`` ...) run code when loaded, so a folder holding one is
refused outright. An import path must resolve inside an allowed import folder, and nothing in it may be a link
that leads out (a symlink to ``/etc`` is refused, not followed).

The sha256 of every file is recorded at registration; :func:`verify` recomputes them (and the file list) before
every load, and checks the Ed25519 signature over the digest when the version is signed, so a tampered artifact
is refused before any of its bytes reach the model loader.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: file suffixes that unpickle on load: never accepted anywhere in an artifact
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
WEIGHT_SUFFIXES = frozenset({".safetensors", ".gguf"})
_SIGN_CONTEXT = b"palisade-model-digest-v1:"


class ArtifactError(ValueError):
    """The artifact is not acceptable (import) or no longer matches what was registered (load)."""


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def resolve_import(path: str | Path, roots: list[Path]) -> Path:
    """The real path of ``path`` if it lies inside one of ``roots`` (symlinks resolved first), else refuse."""
    real_roots = [Path(r).resolve() for r in roots]
    if not real_roots:
        raise ArtifactError("no import folder is configured (PALISADE_MODEL_IMPORT_DIRS)")
    raw = Path(path)
    if ".." in raw.parts:
        raise ArtifactError(f"{path}: '..' is not allowed in an import path")
    real = raw.resolve()
    if not inside(real, real_roots):
        raise ArtifactError(f"{path}: outside the allowed import folders")
    if not real.exists():
        raise ArtifactError(f"{path}: does not exist")
    return real


def _walk(root: Path) -> list[Path]:
    """Every regular file under ``root``; a symlink anywhere is refused (it could point out later)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            p = base / name
            if p.is_symlink():
                raise ArtifactError(f"{p.relative_to(root)}: symbolic links are not allowed in an artifact")
        out.extend(base / f for f in filenames)
    return sorted(out)


def _check_suffixes(files: list[Path], root: Path) -> None:
    for f in files:
        if f.suffix.lower() in PICKLE_SUFFIXES:
            raise ArtifactError(
                f"{f.relative_to(root)}: pickle-based weights are refused (convert to .safetensors)"
            )


def scan(path: Path, kind: str) -> dict[str, str]:
    """Check the layout of a ``kind`` artifact and return relative path -> sha256 of every file."""
    if kind == "gguf":
        if path.is_symlink() or not path.is_file() or path.suffix.lower() != ".gguf":
            raise ArtifactError(f"{path.name}: a GGUF import must be one regular .gguf file")
        return {path.name: sha256_file(path)}
    if not path.is_dir():
        raise ArtifactError(f"{path}: expected a folder")
    files = _walk(path)
    _check_suffixes(files, path)
    names = {f.relative_to(path).as_posix() for f in files}
    weights = [n for n in names if Path(n).suffix.lower() in WEIGHT_SUFFIXES]
    if kind == "adapter":
        if "adapter_config.json" not in names or "adapter_model.safetensors" not in names:
            raise ArtifactError("a peft adapter folder needs adapter_config.json and adapter_model.safetensors")
    elif kind == "transformers":
        if "config.json" not in names or not weights:
            raise ArtifactError("a transformers folder needs config.json and .safetensors weights")
    else:
        raise ArtifactError(f"unknown artifact kind {kind!r}")
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in files}


def detect_kind(path: Path) -> str:
    if path.is_file():
        return "gguf"
    if (path / "adapter_config.json").exists():
        return "adapter"
    return "transformers"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(kind: str, files: Mapping[str, str], base_digest: str | None, spec: Mapping[str, Any]) -> str:
    """One hash naming exactly what would be served: an approval is bound to it."""
    body = {"kind": kind, "files": dict(sorted(files.items())), "base": base_digest, "spec": dict(spec)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sign_digest(key: Ed25519PrivateKey, value: str) -> str:
    """What the trainer does with its key after writing an artifact (hex signature)."""
    return key.sign(_SIGN_CONTEXT + value.encode()).hex()


def check_signature(value: str, signature: str, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(bytes.fromhex(signature), _SIGN_CONTEXT + value.encode())
    except (InvalidSignature, ValueError):
        return False
    return True


def load_trusted_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """``<key id>.pub`` files (raw 32-byte Ed25519 public keys, hex) in ``folder``: the keys whose signatures count."""
    keys: dict[str, Ed25519PublicKey] = {}
    if folder.is_dir():
        for f in sorted(folder.glob("*.pub")):
            keys[f.stem] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(f.read_text().strip()))
    return keys


def verify(
    *,
    artifact: str | None,
    kind: str,
    files: Mapping[str, str],
    spec: Mapping[str, Any],
    base_digest: str | None,
    recorded_digest: str,
    signature: str | None,
    key_id: str | None,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    """Raise :class:`ArtifactError` saying why, unless the artifact on disk is exactly the registered one."""
    if kind != "endpoint":
        if artifact is None:
            raise ArtifactError("the version has no artifact")
        path = Path(artifact)
        try:
            current = scan(path, kind)
        except FileNotFoundError as exc:
            raise ArtifactError(f"artifact file missing: {exc.filename}") from None
        except OSError as exc:
            raise ArtifactError(f"artifact unreadable: {exc.strerror}") from None
        if set(current) != set(files):
            added, gone = sorted(set(current) - set(files)), sorted(set(files) - set(current))
            raise ArtifactError(f"artifact files changed (added {added}, missing {gone})")
        changed = sorted(n for n in files if current[n] != files[n])
        if changed:
            raise ArtifactError(f"sha256 mismatch: {', '.join(changed)}")
    if digest(kind, files, base_digest, spec) != recorded_digest:
        raise ArtifactError("the version's digest does not match its recorded files and spec")
    if signature is not None:
        key = trusted.get(key_id or "")
        if key is None:
            raise ArtifactError(f"signed by an unknown key {key_id!r}")
        if not check_signature(recorded_digest, signature, key):
            raise ArtifactError("the signature over the digest is invalid")
