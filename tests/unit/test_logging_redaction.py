"""The log pipeline's redaction and JSON rendering (gateway.logging), on the event dicts structlog hands them."""

from __future__ import annotations

import json

from gateway.logging import _json, _redact

KEY = "pal_0123456789ab_" + "A" * 43


def render(**fields: object) -> dict:
    return json.loads(_json(_redact(None, "info", dict(fields))))


def test_secret_fields_credentials_in_values_and_bytes_are_redacted() -> None:
    out = render(event="request", request_id="rid-1", authorization="Bearer abc.def", api_key="x", client_secret="y",
                 note=f"sent {KEY} and Bearer eyJhbGciOi.x.y here", raw=b"Bearer abcdef", buf=bytearray(b"ok"),
                 status=200, ms=1.5, principal="key:01J", token_count=12)
    assert out["authorization"] == out["api_key"] == out["client_secret"] == "[redacted]"
    assert out["note"] == "sent [redacted] and [redacted] here"
    assert out["raw"] == "b'[redacted]'" and out["buf"] == "b'ok'"  # bytes as their repr, never base64
    assert (out["event"], out["request_id"], out["status"], out["ms"], out["token_count"]) == ("request", "rid-1", 200,
                                                                                                1.5, 12)
    assert KEY not in json.dumps(out) and "abc.def" not in json.dumps(out)


def test_values_json_cannot_hold_are_logged_as_their_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    assert render(event="x", what=Thing())["what"] == "<thing>"
