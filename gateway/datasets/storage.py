"""Object storage behind one small interface: a local folder by default, S3-compatible storage in production.

Keys are relative, slash-separated names checked against traversal. Writes are atomic (a local write goes to a
temporary file and is renamed), and content-addressed objects are never overwritten.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class StorageError(RuntimeError):
    pass


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise StorageError(f"invalid object key {key!r}")
    return key


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"no object {key}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.exists():
            return
        for p in sorted(base.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                yield str(p.relative_to(self.root))

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        for key in list(self.list(prefix)):
            self._path(key).unlink(missing_ok=True)
            count += 1
        base = self._path(prefix.rstrip("/"))
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True) if base.exists() else []:
            d.rmdir()
        if base.is_dir():
            base.rmdir()
        return count


class S3Store:
    """Any S3-speaking server (AWS, MinIO, Ceph, moto) through boto3."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, **client_kwargs: Any) -> None:
        import boto3

        self.client = client or boto3.client("s3", **client_kwargs)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise StorageError(f"no object {key}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/")) + "/"):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix):]

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)


def store_from_url(url: str, data_dir: Path) -> ObjectStore:
    """``""``/``file://PATH`` -> LocalStore; ``s3://bucket/prefix`` -> S3Store (endpoint from AWS_ENDPOINT_URL)."""
    if not url:
        return LocalStore(data_dir / "datasets")
    if url.startswith("file://"):
        return LocalStore(Path(url[len("file://"):]))
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        return S3Store(bucket, prefix, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    raise StorageError(f"unsupported dataset store {url!r} (file://PATH or s3://bucket/prefix)")
