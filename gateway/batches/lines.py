"""Batch input lines: parse and check them the way the HTTP API would, before any line runs.

A batch file is JSON Lines, one request per line (OpenAI's format)::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [...]}}

The body is decoded with the same request schemas as ``POST /v1/chat/completions`` and ``/v1/completions``, so a
line that the interactive API would refuse is refused here first, with its line number, and nothing runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.errors import ApiError

ENDPOINTS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}
MAX_CUSTOM_ID = 512
MAX_ERRORS = 100  # a validation report lists at most this many lines (then one "too_many_errors" entry)


@dataclass(slots=True)
class Line:
    no: int  # 1-based line number in the file
    custom_id: str
    body: dict[str, Any]
    model: str


@dataclass
class Report:
    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: model alias -> line numbers that use it (first few), for the per-model permission check
    models: dict[str, list[int]] = field(default_factory=dict)
    _more: int = 0

    def error(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        if len(self.errors) >= MAX_ERRORS:
            self._more += 1
            return
        self.errors.append({"code": code, "message": message, "param": param, "line": line})

    def as_errors(self) -> dict[str, Any] | None:
        """OpenAI's ``errors`` object of a failed batch, or None when the file is valid."""
        if not self.errors:
            return None
        data = list(self.errors)
        if self._more:
            data.append({"code": "too_many_errors", "message": f"{self._more} more lines have errors",
                         "param": None, "line": None})
        return {"object": "list", "data": data}


def parse_line(raw: bytes, no: int, endpoint: str) -> Line:
    """One line, checked; raises ``LineError`` with OpenAI-style code and message."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise LineError("invalid_json_line", f"line {no} is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise LineError("invalid_json_line", f"line {no} is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise LineError("missing_custom_id", f"line {no}: custom_id must be a string of 1..{MAX_CUSTOM_ID} "
                        "characters", "custom_id")
    if obj.get("method", "POST") != "POST":
        raise LineError("invalid_method", f"line {no}: method must be POST", "method")
    url = obj.get("url")
    if url != endpoint:
        raise LineError("invalid_url", f"line {no}: url must be the batch's endpoint {endpoint}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_body", f"line {no}: body must be a JSON object", "body")
    try:
        request = msgspec.convert(body, ENDPOINTS[endpoint])
    except msgspec.ValidationError as exc:
        raise LineError("invalid_body", f"line {no}: {exc}", "body") from exc
    if request.stream:
        raise LineError("invalid_body", f"line {no}: stream is not supported in a batch", "body.stream")
    try:
        request.unsupported()
        if isinstance(request, ChatCompletionRequest):
            request.plain_messages()
    except ApiError as exc:
        raise LineError("invalid_body", f"line {no}: {exc.message}",
                        f"body.{exc.param}" if exc.param else "body") from exc
    return Line(no, custom_id, body, request.model)


class LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def iter_lines(raw_lines: Iterable[bytes]) -> Iterable[tuple[int, bytes]]:
    """(line number, bytes) of the non-blank lines; blank lines (a trailing newline) are not requests."""
    for no, raw in enumerate(raw_lines, start=1):
        if raw.strip():
            yield no, raw


def validate(raw_lines: Iterable[bytes], endpoint: str, *, max_lines: int) -> Report:
    """Check every line: JSON, custom_id present and unique, url, body schema. Models are checked after
    (``check_models``), once per distinct model, since that asks the policy."""
    report = Report()
    if endpoint not in ENDPOINTS:
        report.error(None, "invalid_endpoint", f"endpoint must be one of {sorted(ENDPOINTS)}", "endpoint")
        return report
    seen: set[str] = set()
    for no, raw in iter_lines(raw_lines):
        report.total += 1
        if report.total > max_lines:
            report.error(no, "too_many_lines", f"a batch holds at most {max_lines} requests")
            break
        try:
            line = parse_line(raw, no, endpoint)
        except LineError as exc:
            report.error(no, exc.code, exc.message, exc.param)
            continue
        if line.custom_id in seen:
            report.error(no, "duplicate_custom_id", f"line {no}: custom_id is not unique in this file",
                         "custom_id")
            continue
        seen.add(line.custom_id)
        lines_of_model = report.models.setdefault(line.model, [])
        if len(lines_of_model) < MAX_ERRORS:
            lines_of_model.append(no)
    if report.total == 0:
        report.error(None, "empty_file", "the input file has no requests")
    return report


async def check_models(report: Report, model_allowed: Callable[[str], Awaitable[bool]]) -> None:
    """A line naming a model the owner may not use fails validation; a missing model gets the same answer."""
    for model in sorted(report.models):
        if not await model_allowed(model):
            for no in report.models[model]:
                report.error(no, "model_not_found", f"line {no}: model '{model}' does not exist or you do not "
                             "have access to it", "body.model")
