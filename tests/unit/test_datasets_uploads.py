"""Encrypted uploads: byte-exact and seekable read-back (zip), no plaintext on disk, truncation refused."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from gateway.crypto import KeyringError
from gateway.datasets.uploads import CHUNK, UploadTooLarge, UploadWriter, open_upload
from tests.unit.test_datasets_pipeline import keyring  # noqa: F401  (fixture)
from trainer.datasets.ingest import IngestConfig, IngestReport, Source, read_records


def write(path, keyring, data, upload_id="u1", step=100_000):  # noqa: F811
    w = UploadWriter(path, keyring, upload_id)
    for i in range(0, len(data), step):
        w.write(data[i:i + step])
    w.close()


@pytest.mark.parametrize("size", [0, 5, CHUNK, CHUNK + 1, 2 * CHUNK + 77])
def test_roundtrip(tmp_path, keyring, size):  # noqa: F811
    data = os.urandom(size)
    write(tmp_path / "u", keyring, data)
    with open_upload(tmp_path / "u", keyring, "u1") as fh:
        assert fh.read() == data
    with open_upload(tmp_path / "u", keyring, "u1") as fh:
        fh.seek(max(0, size - CHUNK - 10))
        assert fh.read() == data[max(0, size - CHUNK - 10):]


def test_zip_and_no_plaintext(tmp_path, keyring):  # noqa: F811
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "secret alpha text")
        zf.writestr("b.md", "secret beta text " * 100_000)
    write(tmp_path / "u", keyring, buf.getvalue())
    assert b"secret" not in (tmp_path / "u").read_bytes()
    src = Source("upload.zip", lambda: open_upload(tmp_path / "u", keyring, "u1"))
    rows = list(read_records(src, IngestConfig(), IngestReport()))
    assert [r["meta"]["file"] for r in rows] == ["a.txt", "b.md"]


def test_truncation_and_moves_refused(tmp_path, keyring):  # noqa: F811
    write(tmp_path / "u", keyring, os.urandom(2 * CHUNK + 5))
    blob = (tmp_path / "u").read_bytes()
    (tmp_path / "t").write_bytes(blob[: 5 + 4 + CHUNK + 33])  # only the first chunk, sealed as "more"
    with pytest.raises(KeyringError), open_upload(tmp_path / "t", keyring, "u1") as fh:
        fh.read()
    with pytest.raises(KeyringError), open_upload(tmp_path / "u", keyring, "other") as fh:
        fh.read()


def test_size_limit(tmp_path, keyring):  # noqa: F811
    w = UploadWriter(tmp_path / "u", keyring, "u1", max_bytes=10)
    with pytest.raises(UploadTooLarge):
        w.write(b"x" * 11)
    w.abort()
    assert not (tmp_path / "u").exists()
