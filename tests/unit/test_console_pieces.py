"""Console pieces that need no browser: the CSP allows nothing inline, templates escape, cursors round-trip and
refuse garbage, every console route names a policy action, and no template carries inline script or style."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gateway.console import HERE, template_config
from gateway.console.paging import decode_cursor, encode_cursor
from gateway.console.security import CSP, HEADERS


def test_csp_is_strict() -> None:
    assert "unsafe" not in CSP and "script-src 'self'" in CSP and "style-src 'self'" in CSP
    assert "frame-ancestors 'none'" in CSP and HEADERS["X-Frame-Options"] == "DENY"


def test_templates_escape_by_default() -> None:
    engine = template_config().engine_instance
    html = engine.engine.from_string("<p>{{ name }}</p>").render(name="<script>x()</script>")
    assert html == "<p>&lt;script&gt;x()&lt;/script&gt;</p>"


def test_no_inline_script_style_or_handler_in_templates() -> None:
    for path in (HERE / "templates").glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path.name
        assert "<style" not in text and " style=" not in text, path.name
        assert not re.search(r"\son[a-z]+=", text) and "hx-on" not in text, path.name
        assert "|safe" not in text, path.name


def test_cursor_round_trip_and_garbage() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    assert decode_cursor(encode_cursor([at, 42])) == [at.isoformat(), 42]
    for bad in ("", "!!!", "x" * 600, "e30"):  # "e30" is base64 of {}
        assert decode_cursor(bad) is None


def test_every_console_route_declares_an_action(tmp_path, monkeypatch) -> None:
    from gateway.app import create_app
    from gateway.authz.actions import PUBLIC_PATHS, Action
    from gateway.settings import Settings

    monkeypatch.setenv("PALISADE_DATA_DIR", str(tmp_path))
    app = create_app(Settings.from_env())
    seen = 0
    for route in app.routes:
        if not route.path.startswith("/console"):
            continue
        for handler in route.route_handlers:
            if set(getattr(handler, "http_methods", ()) or ()) - {"OPTIONS", "HEAD"}:
                action = handler.opt.get("action")
                assert action, f"{route.path} has no action"
                assert action != Action.PUBLIC or route.path in PUBLIC_PATHS, route.path
                seen += 1
    assert seen > 30
