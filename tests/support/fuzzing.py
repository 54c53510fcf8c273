"""Fuzz the gateway's whole OpenAPI surface with schemathesis as each kind of principal (tests and bench).

``principals(gw, env)`` makes one of each kind on a running gateway: an admin person (password + TOTP login,
so a fresh-MFA session: cookie + CSRF token), an ML engineer, an approver, an app's API key and an OAuth
client's access token. ``fuzz(...)`` runs ``st run`` with that principal's headers and returns what the JUnit
report says: how many operations were exercised and which ones failed (a 5xx, or any failed check).

Operations that would end the fuzzing principal's own session or lock every principal out (a fuzzed policy text
that parses, e.g. an empty one) are left out; everything else is fuzzed, admin writes included.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp

from tests.support.server import GatewayProcess, cli, create_key

ST = str(Path(sys.executable).parent / "st")
#: operations a fuzzer must not run against the shared gateway: they end the session doing the fuzzing, or
#: replace the policy for everybody (an empty or all-deny policy is valid input)
EXCLUDED = ("logout", "logoutEverywhere", "applyPolicy", "rollbackPolicy")
#: ... and, for a person's session, the ones that end it from the side: disabling a user (the stateful phase
#: follows links from the user list to one's own id) and failed logins to one's own name (lockout after 100).
#: The login steps are public: the app principals' runs fuzz them.
EXCLUDED_FOR_PEOPLE = ("disableUser", "login", "loginTotp", "loginRecovery", "loginWebauthn", "loginWebauthnOptions")
#: a person's own operations that check a password or a second factor: 100 wrong ones lock the account (and end
#: the session), so a person's main run leaves them out and a last run (``only=CREDENTIAL_CHECKS``) fuzzes them
CREDENTIAL_CHECKS = ("stepUp", "stepUpWebauthn", "stepUpWebauthnOptions", "totpChangeBegin", "totpChangeConfirm",
                     "recoveryCodes", "webauthnRegister", "webauthnRegisterOptions", "webauthnRemove")


@dataclass
class Principal:
    kind: str
    headers: dict[str, str] = field(default_factory=dict)


def login(gw: GatewayProcess, env: dict, role: str) -> Principal:
    username, password = f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    out = cli(env, "admin", "create", "--username", username, "--password", password, "--role", role).stdout
    seed = parse_qs(urlparse(out.strip().splitlines()[-1]).query)["secret"][0]
    r1 = httpx.post(gw.url + "/auth/login", json={"username": username, "password": password}, timeout=30)
    assert r1.status_code == 200, r1.text
    r2 = httpx.post(gw.url + "/auth/login/totp", json={"code": pyotp.TOTP(seed).now()},
                    headers={"Cookie": r1.headers["set-cookie"].split(";", 1)[0]}, timeout=30)
    assert r2.status_code == 200, r2.text
    session = next(c.split(";", 1)[0] for c in r2.headers.get_list("set-cookie") if "palisade_session=" in c)
    return Principal(role, {"Cookie": session, "X-CSRF-Token": r2.json()["csrf_token"]})


KINDS = ("admin", "ml_engineer", "approver", "app_key", "oauth_app")


def make_principal(gw: GatewayProcess, env: dict, kind: str) -> Principal:
    """A fresh principal of ``kind``, made just before its run: an admin's fuzzing may revoke keys, disable
    clients or rotate signing keys it finds through links, so credentials are never shared between runs."""
    if kind == "app_key":
        return Principal(kind, {"Authorization": f"Bearer {create_key(env, 'fuzz-app')}"})
    if kind == "oauth_app":
        client = json.loads(cli(env, "clients", "create", "--name", "fuzz-client").stdout.strip().splitlines()[-1])
        token = httpx.post(gw.url + "/oauth/token", data={"grant_type": "client_credentials"},
                           auth=(client["client_id"], client["client_secret"]), timeout=30).json()["access_token"]
        return Principal(kind, {"Authorization": f"Bearer {token}"})
    return login(gw, env, kind)


@dataclass
class FuzzResult:
    returncode: int
    operations: int
    failures: dict[str, str]
    output: str


def fuzz(gw: GatewayProcess, who: Principal, workdir: Path, *, examples: int, seed: int = 1,
         phases: str = "examples,coverage,fuzzing,stateful", timeout: float = 600,
         only: tuple[str, ...] = ()) -> FuzzResult:
    """One ``st run`` as ``who``; ``only`` limits it to those operation ids (else: all but the exclusions)."""
    workdir.mkdir(parents=True, exist_ok=True)
    junit = workdir / f"{who.kind}{'-only' if only else ''}.xml"
    args = [ST, "run", f"{gw.url}/schema/openapi.json", "--checks", "not_a_server_error",
            "--max-examples", str(examples), "--seed", str(seed), "--phases", phases, "--workers", "1",
            "--request-timeout", "30", "--no-color", "--continue-on-failure", "--suppress-health-check", "all",
            "--report", "junit", "--report-junit-path", str(junit), "--generation-database", "none",
            "--generation-with-security-parameters", "false"]  # our credentials, not generated ones
    person = "Cookie" in who.headers
    if only:
        for op in only:
            args += ["--include-operation-id", op]
    else:
        for op in EXCLUDED + (EXCLUDED_FOR_PEOPLE + CREDENTIAL_CHECKS if person else ()):
            args += ["--exclude-operation-id", op]
    for name, value in who.headers.items():
        args += ["-H", f"{name}: {value}"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    failures: dict[str, str] = {}
    operations = 0
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            operations += 1
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                failures[case.get("name", "?")] = (bad.get("message") or bad.text or "")[:500]
    return FuzzResult(run.returncode, operations, failures, run.stdout + run.stderr)
