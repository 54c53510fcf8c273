"""Artifact rules without a database: which files an import accepts, and what verification catches."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.models import artifacts
from gateway.models.artifacts import ArtifactError


def _verify(path: Path, kind: str, files: dict, dig: str, **kw) -> None:
    artifacts.verify(artifact=str(path), kind=kind, files=files, spec={"backend": "embedded"}, base_digest=None,
                     recorded_digest=dig, signature=kw.get("signature"), key_id=kw.get("key_id"),
                     trusted=kw.get("trusted", {}))


def test_gguf_file_accepted_and_any_change_detected(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 64)
    files = artifacts.scan(f, "gguf")
    dig = artifacts.digest("gguf", files, None, {"backend": "embedded"})
    _verify(f, "gguf", files, dig)
    f.write_bytes(b"GGUF" + b"\1" * 64)
    with pytest.raises(ArtifactError, match="sha256 mismatch: m.gguf"):
        _verify(f, "gguf", files, dig)
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="one regular .gguf"):
        artifacts.scan(tmp_path / "m.bin", "gguf")


def test_folder_rules_and_added_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="safetensors"):
        artifacts.scan(tmp_path, "transformers")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    files = artifacts.scan(tmp_path, "transformers")
    dig = artifacts.digest("transformers", files, None, {"backend": "embedded"})
    (tmp_path / "extra.py").write_text("import os")  # a file nobody registered (trust_remote_code bait)
    with pytest.raises(ArtifactError, match=r"added \['extra.py'\]"):
        _verify(tmp_path, "transformers", files, dig)
    (tmp_path / "extra.py").unlink()
    (tmp_path / "optimizer.pt").write_bytes(b"\x80")
    with pytest.raises(ArtifactError, match="pickle"):
        artifacts.scan(tmp_path, "transformers")


def test_signature_over_the_digest(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    files = artifacts.scan(f, "gguf")
    dig = artifacts.digest("gguf", files, None, {"backend": "embedded"})
    key = Ed25519PrivateKey.generate()
    sig = artifacts.sign_digest(key, dig)
    _verify(f, "gguf", files, dig, signature=sig, key_id="t", trusted={"t": key.public_key()})
    with pytest.raises(ArtifactError, match="unknown key"):
        _verify(f, "gguf", files, dig, signature=sig, key_id="other", trusted={"t": key.public_key()})
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ArtifactError, match="signature over the digest is invalid"):
        _verify(f, "gguf", files, dig, signature=sig, key_id="t", trusted={"t": other.public_key()})


def test_import_paths_must_stay_inside_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    (root / "m").mkdir(parents=True)
    assert artifacts.resolve_import(root / "m", [root]) == (root / "m").resolve()
    with pytest.raises(ArtifactError, match="outside"):
        artifacts.resolve_import(tmp_path, [root])
    with pytest.raises(ArtifactError, match=r"'\.\.'"):
        artifacts.resolve_import(root / "m" / ".." / "m", [root])
    with pytest.raises(ArtifactError, match="no import folder"):
        artifacts.resolve_import(root / "m", [])
