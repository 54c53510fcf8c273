"""S3Store against a real S3-speaking server process (moto's standalone server on a free port)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from gateway.datasets.shards import KeyringSealer, iter_split
from gateway.datasets.storage import S3Store, StorageError
from tests.support.server import free_port
from tests.unit.test_datasets_pipeline import keyring, prose, write_jsonl  # noqa: F401  (fixture)
from trainer.datasets.pipeline import PipelineConfig, run_pipeline


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def store(s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")  # noqa: S106
    client.create_bucket(Bucket="datasets")
    return S3Store("datasets", "palisade", client=client)


def test_roundtrip_and_delete(store):
    store.put("v9/objects/abc", b"blob")
    assert store.get("v9/objects/abc") == b"blob" and store.exists("v9/objects/abc")
    assert list(store.list("v9")) == ["v9/objects/abc"]
    assert store.delete_prefix("v9") == 1 and not store.exists("v9/objects/abc")
    with pytest.raises(StorageError):
        store.get("v9/objects/abc")
    with pytest.raises(StorageError):
        store.put("../escape", b"x")


def test_pipeline_writes_encrypted_shards_to_s3(tmp_path, store, keyring):  # noqa: F811
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": prose(i)} for i in range(20)])
    sealer = KeyringSealer(keyring, "s3v")
    result = run_pipeline(src, PipelineConfig(), store=store, sealer=sealer, version_id="s3v")
    assert sum(1 for _ in iter_split(store, sealer, result.manifest, "train")) == result.card["splits"]["train"]
    for key in store.list("s3v"):
        if "/objects/" in key:
            assert b"Note 1" not in store.get(key)
    assert store.delete_prefix("s3v") >= 2
