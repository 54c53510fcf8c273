"""The web console in a real browser: Playwright driving the distribution's headless Chromium against a real
``palisade serve`` (embedded mode, a fake OpenAI upstream so the dashboard has traffic).

One server, one browser, module-scoped sign-ins; the tests run in file order and build on each other (the key
made by one is revoked by a later one). Screenshots go to ``test-artifacts/console/`` (gitignored).

Needs: ``apt-get install -y chromium`` and ``pip install playwright`` (no ``playwright install``: the system
browser is used). Skipped with a message when either is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.server import ROOT, GatewayProcess, base_env, cli

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

CHROMIUM = os.environ.get("PALISADE_CHROMIUM") or next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium: apt-get install -y chromium (CI installs it)"
)

ARTIFACTS = ROOT / "test-artifacts" / "console"
AXE = Path(__file__).resolve().parents[1] / "support" / "axe.min.js"
PASSWORD = "quiet-harbour-lantern-42"
PAYLOAD = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


class Person:
    def __init__(self, env: dict[str, str], username: str, role: str) -> None:
        out = cli(env, "admin", "create", "--username", username, "--password", PASSWORD, "--role", role).stdout
        self.username = username
        self.seed = parse_qs(urlparse(out.strip().splitlines()[-1]).query)["secret"][0]

    def code(self, ahead_s: float = 0.0) -> str:
        return pyotp.TOTP(self.seed).at(time.time() + ahead_s)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("console")
    with serve_fake("ok", "openai") as upstream:
        models = tmp / "models.yaml"
        models.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
                          "    upstream_model: fake-model\n")
        # the embedded Celery worker beside the server processes the uploaded dataset
        env = base_env(tmp, PALISADE_MODELS_FILE=str(models), PALISADE_SERVE_WORKER="true")
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env
        finally:
            gw.stop()


@pytest.fixture(scope="module")
def people(server: tuple[GatewayProcess, dict[str, str]]) -> dict[str, Person]:
    _, env = server
    return {"admin": Person(env, "alice", "admin"), "viewer": Person(env, "victor", "viewer"),
            "engineer": Person(env, "erin", "ml_engineer")}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def sign_in(browser: object, gw: GatewayProcess, person: Person, **context_kw: object) -> tuple[object, object]:
    ctx = browser.new_context(base_url=gw.url, accept_downloads=True, **context_kw)  # type: ignore[attr-defined]
    page = ctx.new_page()
    page.csp_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_errors.append(m.text))
    page.goto("/console/login")
    page.fill("input[name=username]", person.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.fill("input[name=code]", person.code())
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console/[a-z]+$"))
    return ctx, page


@pytest.fixture(scope="module")
def admin(browser: object, server: tuple[GatewayProcess, dict[str, str]], people: dict[str, Person]) -> object:
    gw, _ = server
    ctx, page = sign_in(browser, gw, people["admin"])
    yield page
    ctx.close()  # type: ignore[attr-defined]


def shot(page: object, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def step_up_if_asked(page: object, field: str, person: Person) -> None:
    """Fill the inline step-up code when the form asks for it (MFA older than 5 minutes)."""
    box = page.locator(field)  # type: ignore[attr-defined]
    if box.get_attribute("required") is not None:
        box.fill(person.code(ahead_s=30))  # the next step: the login's code is never accepted twice


def test_sign_in_with_totp_lands_on_dashboard_with_strict_headers(server, admin) -> None:
    gw, env = server
    assert admin.url.endswith("/console/dashboard")
    assert admin.locator("h1").inner_text() == "Dashboard"
    cookies = {c["name"]: c for c in admin.context.cookies()}
    session = cookies["__Host-palisade_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    response = admin.goto("/console/dashboard")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    # some traffic for the charts: two completions through an API key made with the CLI
    key = cli(env, "keys", "create", "--name", "dash-app").stdout.strip().splitlines()[-1]
    for _ in range(2):
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200, r.text
    admin.goto("/console/dashboard")
    admin.wait_for_selector(".chart canvas")
    assert "mock" in admin.locator("#per-model").inner_text()
    shot(admin, "dashboard")


def test_wrong_code_is_refused_with_one_message(browser, server, people) -> None:
    gw, _ = server
    ctx = browser.new_context(base_url=gw.url)
    page = ctx.new_page()
    page.goto("/console/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "invalid credentials"
    ctx.close()


def test_create_api_key_shows_it_once(server, admin) -> None:
    gw, _ = server
    admin.goto("/console/keys")
    admin.fill("#key-name", "billing-app")
    admin.fill("#key-models", "mock")
    admin.click("form[hx-post='/console/keys'] button[type=submit]")
    secret = admin.locator("#new-secret").inner_text()
    assert re.fullmatch(r"pal_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", secret)
    shot(admin, "key-created")
    r = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["mock"]
    admin.reload()
    assert secret not in admin.content()
    assert "billing-app" in admin.locator("table").inner_text()


def test_html_in_a_name_renders_as_text(server, admin) -> None:
    admin.goto("/console/keys")
    admin.fill("#key-name", PAYLOAD)
    admin.click("form[hx-post='/console/keys'] button[type=submit]")
    admin.wait_for_selector("#new-secret")
    assert PAYLOAD in admin.locator("#key-created h3").inner_text()  # shown as text in the fragment too
    admin.reload()
    assert PAYLOAD in admin.locator("table").inner_text()
    assert admin.locator("table img").count() == 0 and admin.locator("table script").count() == 0
    assert admin.evaluate("() => window.__pwned") is None
    admin.goto("/console/audit?action=admin:key:create")
    seq = admin.locator("#audit-rows a").first.inner_text()
    admin.goto(f"/console/audit/records/{seq}")
    assert json.dumps(PAYLOAD)[1:-1] in admin.locator("pre.details").inner_text()  # the details, as text
    assert admin.locator("pre.details *").count() == 0
    assert admin.evaluate("() => window.__pwned") is None
    shot(admin, "payload-inert")


def _age_mfa(env: dict[str, str], username: str, minutes: int = 10) -> None:
    """Make the person's console sessions' last MFA check older than the 5-minute step-up window."""
    db = Path(env["PALISADE_DATA_DIR"]) / "palisade.db"
    old = (datetime.now(UTC) - timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE user_sessions SET mfa_at = ? WHERE user_id = (SELECT id FROM users WHERE username = ?)",
                     (old, username))


def test_edit_policy_explain_and_apply_with_step_up(server, admin, people) -> None:
    _, env = server
    _age_mfa(env, "alice")
    admin.goto("/console/policies")
    assert admin.locator("#mfa-policy").get_attribute("required") is not None  # the step-up is asked inline
    text = admin.locator("#policy-text").input_value()
    admin.locator("#policy-text").fill(text + "\np, broken row\n")
    admin.wait_for_selector("#check-result .error")
    assert "Not valid" in admin.locator("#check-result").inner_text()
    rule = "p, admin:limit:read, \"'approver' in r.sub.roles\", True, True, allow, approver-limits"
    admin.locator("#policy-text").fill(text.rstrip("\n") + "\n" + rule + "\n")
    admin.wait_for_selector("#check-result pre.diff")
    assert "approver-limits" in admin.locator("#check-result").inner_text()
    # explain against the edited text
    admin.fill("#t-action", "admin:limit:read")
    admin.fill("#t-roles", "approver")
    admin.click("form[hx-post='/console/policies/test'] button[type=submit]")
    admin.wait_for_selector("#explain .decision")
    explained = admin.locator("#explain").inner_text()
    assert "ALLOWED" in explained and "approver-limits" in explained
    shot(admin, "policy-explain")
    # apply: a code from the authenticator is asked for and accepted inline
    admin.fill("#policy-reason", "approvers read limits")
    admin.fill("#mfa-policy", "000000")
    admin.click("form#policy-form button[type=submit]")
    admin.wait_for_selector("#apply-result [role=alert]")
    assert "authenticator" in admin.locator("#apply-result").inner_text()
    step_up_if_asked(admin, "#mfa-policy", people["admin"])
    admin.click("form#policy-form button[type=submit]")
    admin.wait_for_selector("#apply-result .ok")
    assert "Stored as version 2" in admin.locator("#apply-result").inner_text()
    shot(admin, "policy-applied")
    admin.goto("/console/policies/2")
    assert "approver-limits" in admin.locator("pre.diff").inner_text()


def test_audit_search_pages_with_a_cursor(server, admin) -> None:
    gw, _ = server
    for _ in range(60):  # refused credentials: one audit record each
        httpx.get(gw.url + "/v1/models", headers={"Authorization": "Bearer not-a-key"}, timeout=10)
    admin.goto("/console/audit")
    assert admin.locator("#audit-rows tr").count() == 51  # 50 records and the "older" row
    admin.click("#audit-rows tr.more a")
    admin.wait_for_function("() => document.querySelectorAll('#audit-rows tr').length > 51")
    seqs = [int(s) for s in admin.locator("#audit-rows td:first-child a").all_inner_texts()]
    assert len(seqs) > 50 and len(seqs) == len(set(seqs)) and seqs == sorted(seqs, reverse=True)


def test_export_audit_trail_and_verify_it_offline(server, admin, people, tmp_path) -> None:
    _, env = server
    admin.goto("/console/audit?action=admin:*")
    assert "admin:policy:change" in admin.locator("#audit-rows").inner_text()
    admin.goto("/console/audit")
    step_up_if_asked(admin, "#mfa-export", people["admin"])
    admin.click("form[hx-post='/console/audit/export'] button[type=submit]")
    admin.wait_for_selector("#export-result .ok")
    shot(admin, "audit-export")
    files = {}
    for link in admin.locator("#export-result a[download]").all():
        with admin.expect_download() as info:
            link.click()
        download = info.value
        files[download.suggested_filename] = tmp_path / download.suggested_filename
        download.save_as(files[download.suggested_filename])
    export = next(p for n, p in files.items() if n.endswith(".jsonl"))
    assert (tmp_path / (export.name + ".manifest.json")).exists()
    key = tmp_path / "palisade-audit-public-key.pem"
    out = cli(env, "audit", "verify-export", str(export), "--public-key", str(key))
    assert out.stdout.strip().splitlines()[-1].startswith("OK:"), out.stdout
    assert json.loads(export.read_text().splitlines()[0])["seq"] == 1
    # the record's place in the chain, and verify on demand
    admin.goto("/console/audit/records/2")
    assert "matches record 1" in admin.locator("main").inner_text()
    admin.goto("/console/audit/status")
    admin.click("form[hx-post='/console/audit/verify'] button[type=submit]")
    admin.wait_for_selector("#verify-result [role=status]")
    assert admin.locator("#verify-result [role=status]").inner_text().startswith("OK")


def test_promote_a_model_with_step_up(server, admin, people, tiny_model_dir) -> None:
    _, env = server
    dest = Path(env["PALISADE_DATA_DIR"]) / "imports" / "tiny"
    shutil.copytree(tiny_model_dir, dest)
    version = cli(env, "models", "import", "--name", "tiny", "--path", str(dest)).stdout.strip().splitlines()[-1]
    admin.goto("/console/models")
    admin.click("a:text-is('tiny')")
    assert version in admin.locator("main").inner_text()
    admin.select_option("#pr-version", version)
    step_up_if_asked(admin, "#mfa-promote", people["admin"])
    admin.click("form[hx-post='/console/models/promote'] button[type=submit]")
    admin.wait_for_selector("#promote-result [role=status], #promote-result [role=alert]")
    assert f"now serves {version}" in admin.locator("#promote-result").inner_text()
    shot(admin, "model-promoted")
    admin.reload()
    history = admin.locator("table").last.inner_text()
    assert "promote" in history and "user:" in history


def test_dataset_then_run_each_approved_by_a_second_person(browser, server, admin, people, tmp_path) -> None:
    """An engineer uploads a dataset (streamed to the API, encrypted as it arrives) and follows the pipeline live;
    the admin approves it; the engineer requests a run; the admin approves the run (four eyes, step-up inline),
    then cancels it (this test does not wait for training)."""
    gw, _ = server
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                                     {"role": "assistant", "content": f"answer {i}."}]}) + "\n"
                            for i in range(40)))
    ctx, eng = sign_in(browser, gw, people["engineer"])
    assert eng.url.endswith("/console/datasets")  # an engineer lands on the first page the role may see
    eng.set_input_files("#d-file", str(data))
    eng.fill("#d-name", "support-chats")
    eng.fill("#d-purpose", "fine-tune the support assistant")
    eng.click("form[hx-post='/admin/datasets'] button[type=submit]")
    eng.wait_for_url(re.compile(r"/console/datasets/[0-9a-f]+$"))
    dataset_id = eng.url.rsplit("/", 1)[1]
    assert "support-chats" in eng.locator("h1").inner_text()
    eng.wait_for_selector("#progress strong:text-is('ready')", timeout=150_000)  # polled every 2 s
    shot(eng, "dataset-ready")
    assert eng.locator("#decide-h").count() == 0  # an engineer may not decide on datasets at all
    admin.goto(f"/console/datasets/{dataset_id}")
    admin.fill("#dec-reason", "card checked")
    step_up_if_asked(admin, "#mfa-decide", people["admin"])
    admin.click("#decide-h ~ form button:text-is('Approve')")
    admin.wait_for_selector("#decide-result [role=status], #decide-result [role=alert]")
    assert "approved" in admin.locator("#decide-result").inner_text(), admin.locator("#decide-result").inner_text()
    eng.goto("/console/runs")
    eng.fill("#r-dataset", dataset_id)
    eng.select_option("#r-method", "sft-lora")
    eng.fill("#r-max_steps", "2")
    eng.click("form[hx-post='/console/runs'] button[type=submit]")
    eng.wait_for_selector("#run-created a")
    run_url = eng.locator("#run-created a").get_attribute("href")
    ctx.close()
    admin.goto(run_url)
    assert "awaiting_approval" in admin.locator("main").inner_text()
    step_up_if_asked(admin, "#mfa-approve", people["admin"])
    admin.click("form[hx-post$='/approve'] button[type=submit]")
    admin.wait_for_selector("#approve-result [role=status], #approve-result [role=alert]")
    assert "Approved" in admin.locator("#approve-result").inner_text(), admin.locator("#approve-result").inner_text()
    shot(admin, "run-approved")
    admin.reload()
    cancel = admin.locator("button:text-is('Cancel run')")
    if cancel.count():  # still queued or running: stop it (the worker may finish it first: either is fine)
        admin.on("dialog", lambda d: d.accept())
        try:
            cancel.click(timeout=5_000)
            admin.wait_for_selector("#cancel-result [role=status], #cancel-result [role=alert]", timeout=10_000)
            # the cancel is cooperative: the answer may still say the run is queued or running
            assert re.search(r"cancel|succeeded|failed|finished|running|queued",
                             admin.locator("#cancel-result").inner_text())
        except sync_api.TimeoutError:
            pass  # the live status replaced the button: the run ended meanwhile
    # whichever came first, the run page ends in a final state (no base model is installed here)
    deadline = time.monotonic() + 90
    while not re.search(r"Status\s+(succeeded|failed|cancelled)", admin.locator("main").inner_text()):
        assert time.monotonic() < deadline, admin.locator("main").inner_text()
        time.sleep(1)
        admin.reload()


def test_a_viewer_cannot_reach_admin_pages(browser, server, people) -> None:
    gw, _ = server
    ctx, page = sign_in(browser, gw, people["viewer"])
    assert page.url.endswith("/console/account")
    assert [a.inner_text() for a in page.locator("nav[aria-label=Main] a").all()] == ["My account"]
    for path in ("/console/dashboard", "/console/keys", "/console/people", "/console/apps", "/console/policies",
                 "/console/limits", "/console/audit", "/console/audit/public-key", "/console/models",
                 "/console/datasets", "/console/runs"):
        response = page.goto(path)
        assert response.status == 403, path
        assert "Not allowed" in page.locator("h1").inner_text()
    shot(page, "viewer-forbidden")
    page.goto("/console/account")
    csrf = json.loads(page.locator("body").get_attribute("hx-headers"))
    r = page.request.post(gw.url + "/console/keys", form={"name": "sneaky"}, headers=csrf)
    assert r.status == 403
    r = page.request.post(gw.url + "/console/keys", form={"name": "sneaky"})  # no CSRF header either
    assert r.status == 403
    assert page.csp_errors == []
    ctx.close()


def test_keyboard_only_creates_a_key(admin) -> None:
    admin.goto("/console/keys")
    admin.keyboard.press("Tab")  # the skip link comes first
    assert admin.evaluate("() => document.activeElement.className") == "skip"
    admin.keyboard.press("Enter")
    for _ in range(20):
        admin.keyboard.press("Tab")
        if admin.evaluate("() => document.activeElement.id") == "key-name":
            break
    admin.keyboard.type("keyboard-app")
    admin.keyboard.press("Tab")
    admin.keyboard.type("mock")
    for _ in range(5):
        admin.keyboard.press("Tab")
        if admin.evaluate("() => document.activeElement.tagName") == "BUTTON":
            break
    admin.keyboard.press("Enter")
    admin.wait_for_selector("#new-secret")
    # the result takes the focus, so a screen-reader or keyboard user lands on it
    assert admin.evaluate("() => document.activeElement.getAttribute('role')") == "status"
    shot(admin, "keyboard")


def test_no_serious_accessibility_violation_on_any_page(browser, server, admin) -> None:
    gw, _ = server
    ctx = browser.new_context(base_url=gw.url, bypass_csp=True)  # axe is injected as a script
    ctx.add_cookies(admin.context.cookies())
    page = ctx.new_page()
    pages = ["/console/login", "/console/dashboard", "/console/people", "/console/apps", "/console/keys",
             "/console/policies", "/console/policies/1", "/console/limits", "/console/audit",
             "/console/audit/status", "/console/audit/records/1", "/console/account", "/console/models",
             "/console/models/tiny", "/console/datasets", "/console/runs", "/console/nowhere"]
    problems = {}
    for path in pages:
        page.goto(path)
        page.add_script_tag(path=str(AXE))
        found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))""")
        if found:
            problems[path] = found
    shot(page, "axe-last")
    ctx.close()
    assert problems == {}
    assert admin.csp_errors == []  # nothing the pages did was blocked by the CSP
