"""Ingest: read an uploaded file (or a folder / zip of .txt/.md) as a stream of records.

Formats: JSONL chat (``{"messages": [...]}``), JSONL prompt/completion, JSONL or CSV with a text field, plain
text (one document per blank-line separated paragraph), a folder or zip of ``.txt``/``.md`` files (one document
per file). A malformed line is reported with its line number; ``on_error="skip"`` drops it and carries on,
``on_error="fail"`` stops the job with :class:`IngestError` (the caller then writes nothing).

Everything streams: a file is read line by line, a zip member by member, so memory is bounded by the longest
line (``max_line_bytes``), not by the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from trainer.datasets.records import Record
from trainer.datasets.tags import clean_labels

FORMATS = ("auto", "chat", "prompt_completion", "text")
ROLES = {"system", "user", "assistant", "tool"}
TEXT_SUFFIXES = (".txt", ".md")
MAX_REPORTED_ERRORS = 100


class IngestError(ValueError):
    """The input cannot be read as asked; ``errors`` lists ``(line, message)``."""

    def __init__(self, message: str, errors: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


@dataclass
class IngestReport:
    format: str = "auto"
    lines: int = 0
    records: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS

    def add_error(self, line: int, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((line, message))


@dataclass(frozen=True)
class IngestConfig:
    format: str = "auto"
    on_error: str = "fail"  # skip | fail
    text_field: str = "text"
    max_line_bytes: int = 8 * 1024 * 1024
    max_member_bytes: int = 64 * 1024 * 1024  # one file inside a zip (zip-bomb guard)
    max_total_bytes: int = 16 * 1024 * 1024 * 1024
    #: a field of each JSONL object / CSV column imported as the record's labels (``meta.labels``)
    label_field: str | None = None


@dataclass(frozen=True)
class Source:
    """An input file: its original name (the suffix picks the parser) and how to open it as a binary stream
    (a plain file, or the decrypting reader of an encrypted upload; zips need it seekable)."""

    name: str
    open: Callable[[], BinaryIO]

    @classmethod
    def of(cls, path: Path) -> Source:
        return cls(Path(path).name, lambda: open(path, "rb"))  # noqa: SIM115


def read_records(source: Path | Source, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    """Records of ``source`` in input order, each with ``meta.line`` (or ``meta.file``) for provenance."""
    if config.format not in FORMATS:
        raise IngestError(f"unknown format {config.format!r}; one of {', '.join(FORMATS)}")
    if config.on_error not in ("skip", "fail"):
        raise IngestError("on_error must be skip or fail")
    if isinstance(source, Path):
        if source.is_dir():
            report.format = "text"
            yield from _folder(source, config, report)
            return
        source = Source.of(source)
    with source.open() as probe:
        is_zip = zipfile.is_zipfile(probe)
    if is_zip:
        report.format = "text"
        yield from _zip(source, config, report)
        return
    suffix = Path(source.name).suffix.lower()
    if suffix == ".csv":
        report.format = "text" if config.format == "auto" else config.format
        yield from _csv(source, config, report)
    elif suffix in TEXT_SUFFIXES or (config.format == "text" and suffix not in (".jsonl", ".json", ".ndjson")):
        report.format = "text"
        yield from _plain(source, config, report)
    else:
        yield from _jsonl(source, config, report)


# --- JSONL ---------------------------------------------------------------------------------------------------
def _jsonl(source: Source, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    fmt = config.format
    with source.open() as fh:
        for lineno, raw in enumerate(_lines(fh, config.max_line_bytes), start=1):
            report.lines = lineno
            if isinstance(raw, _TooLong):
                _bad(report, config, lineno, f"line longer than {config.max_line_bytes} bytes")
                continue
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                _bad(report, config, lineno, f"not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})")
                continue
            if fmt == "auto":
                fmt = _detect(obj, config.text_field)
                if fmt is None:
                    _bad(report, config, lineno, "cannot tell the format (no messages, prompt or "
                                                 f"{config.text_field} field)")
                    fmt = "auto"
                    continue
                report.format = fmt
            record, problem = _shape(obj, fmt, config.text_field)
            if problem:
                _bad(report, config, lineno, problem)
                continue
            record["meta"] = _with_labels({"line": lineno}, obj, config.label_field)
            report.records += 1
            yield record
    if report.format == "auto":
        report.format = fmt


def _detect(obj: object, text_field: str) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    if text_field in obj:
        return "text"
    return None


def _shape(obj: object, fmt: str, text_field: str) -> tuple[Record, str | None]:
    if not isinstance(obj, dict):
        return {}, "a line must be a JSON object"
    if fmt == "chat":
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            return {}, "messages must be a non-empty list"
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                return {}, f"messages[{i}] needs a string content"
            if m.get("role") not in ROLES:
                return {}, f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}"
            out.append({"role": m["role"], "content": m["content"]})
        return {"messages": out}, None
    if fmt == "prompt_completion":
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return {}, "prompt and completion must be strings"
        return {"prompt": prompt, "completion": completion}, None
    value = obj.get(text_field)
    if not isinstance(value, str):
        return {}, f"field {text_field!r} must be a string"
    return {"text": value}, None


class _TooLong:
    """Marks a line that was longer than the limit (its bytes were skipped, not held)."""


def _lines(fh: io.BufferedReader, limit: int) -> Iterator[bytes | _TooLong]:
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # drain the rest of the over-long line without holding it
                more = fh.readline(limit)
                if not more or more.endswith(b"\n"):
                    break
            yield _TooLong()
            continue
        yield line


def _bad(report: IngestReport, config: IngestConfig, lineno: int, message: str) -> None:
    if config.on_error == "fail":
        raise IngestError(f"line {lineno}: {message}", [(lineno, message)])
    report.add_error(lineno, message)


def _with_labels(meta: dict, row: object, label_field: str | None) -> dict:
    """``meta`` plus the row's imported labels (short identifiers only; the rest is counted, not kept)."""
    if label_field and isinstance(row, dict) and row.get(label_field) not in (None, ""):
        labels, rejected = clean_labels(row[label_field])
        meta["labels"] = labels
        if rejected:
            meta["labels_rejected"] = rejected
    return meta


# --- CSV -----------------------------------------------------------------------------------------------------
def _csv(source: Source, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    csv.field_size_limit(config.max_line_bytes)
    with source.open() as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames or []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise IngestError(f"line 1: unreadable CSV header ({exc})", [(1, "unreadable CSV header")]) from exc
        wanted = ("prompt", "completion") if config.format == "prompt_completion" else (config.text_field,)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise IngestError(f"line 1: CSV has no column {missing[0]!r}", [(1, f"no column {missing[0]!r}")])
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                _bad(report, config, reader.line_num, f"malformed CSV row ({str(exc)[:80]})")
                continue
            lineno = reader.line_num
            report.lines = lineno
            if None in row or any(row.get(c) is None for c in wanted):
                _bad(report, config, lineno, "row has the wrong number of columns")
                continue
            if config.format == "prompt_completion":
                record: Record = {"prompt": row["prompt"], "completion": row["completion"]}
            else:
                record = {"text": row[config.text_field]}
            record["meta"] = _with_labels({"line": lineno}, row, config.label_field)
            report.records += 1
            yield record


# --- plain text, folders, zips -------------------------------------------------------------------------------
def _plain(source: Source, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    """One record per paragraph (blank-line separated); ``meta.line`` is the paragraph's first line."""
    para: list[str] = []
    start = 0
    with source.open() as fh:
        for lineno, raw in enumerate(_lines(fh, config.max_line_bytes), start=1):
            report.lines = lineno
            if isinstance(raw, _TooLong):
                _bad(report, config, lineno, f"line longer than {config.max_line_bytes} bytes")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _bad(report, config, lineno, "not valid UTF-8")
                continue
            if line.strip():
                if not para:
                    start = lineno
                para.append(line)
            elif para:
                report.records += 1
                yield {"text": "".join(para), "meta": {"line": start}}
                para = []
    if para:
        report.records += 1
        yield {"text": "".join(para), "meta": {"line": start}}


def _folder(root: Path, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not name.lower().endswith(TEXT_SUFFIXES):
                continue
            rel = str(p.relative_to(base))
            yield from _document(rel, lambda p=p: p.open("rb"), p.stat().st_size, config, report)


def _zip(source: Source, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    total = 0
    with source.open() as raw, zipfile.ZipFile(raw) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.lower().endswith(TEXT_SUFFIXES):
                continue
            total += info.file_size
            if total > config.max_total_bytes:
                raise IngestError(f"zip expands beyond {config.max_total_bytes} bytes")
            yield from _document(info.filename, lambda info=info: zf.open(info), info.file_size, config, report)


def _document(name: str, opener, size: int, config: IngestConfig, report: IngestReport) -> Iterator[Record]:
    report.lines += 1
    if size > config.max_member_bytes:
        _bad(report, config, report.lines, f"{name}: larger than {config.max_member_bytes} bytes")
        return
    with opener() as fh:
        data = fh.read(config.max_member_bytes + 1)
    if len(data) > config.max_member_bytes:
        _bad(report, config, report.lines, f"{name}: larger than {config.max_member_bytes} bytes")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _bad(report, config, report.lines, f"{name}: not valid UTF-8")
        return
    report.records += 1
    yield {"text": text, "meta": {"file": name}}
