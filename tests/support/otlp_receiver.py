"""A minimal OTLP/HTTP trace receiver for tests: decodes the protobuf the exporter sends and writes one JSON line
per span (name, ids, parent, kind, attributes, service name) to a file.

    python -m tests.support.otlp_receiver --port 4318 --out spans.jsonl

``OtlpReceiver`` runs it as a subprocess (a real process, as a collector would be) and reads the spans back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.server import ROOT, free_port


def _value(v):  # noqa: ANN001, ANN202 - AnyValue -> plain Python
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[dict]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex() or None, "kind": int(s.kind),
                    "attributes": {a.key: _value(a.value) for a in s.attributes},
                    "status": int(s.status.code), "service": resource.get("service.name"),
                })
    return out


def serve(port: int, out: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            with open(out, "a") as f:
                for s in decode(body):
                    f.write(json.dumps(s) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    out.touch()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class OtlpReceiver:
    def __init__(self, out: Path) -> None:
        self.out, self.port = out, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> OtlpReceiver:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.otlp_receiver", "--port", str(self.port),
                                      "--out", str(self.out)], cwd=ROOT)
        deadline = time.monotonic() + 20
        while not self.out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the file is touched just before the socket listens
        return self

    def spans(self, *, wait_for: str | None = None, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            spans = [json.loads(x) for x in self.out.read_text().splitlines() if x.strip()]
            if wait_for is None or any(s["name"] == wait_for for s in spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    serve(a.port, a.out)
