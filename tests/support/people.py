"""A person signed in to a real gateway (password + TOTP, so their MFA is fresh): console session headers."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp

from tests.support.server import GatewayProcess, cli


def login(gw: GatewayProcess, env: dict, role: str) -> dict[str, str]:
    """Create a person with ``role`` through the CLI and log in; the Cookie and CSRF headers of the session."""
    username, password = f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    out = cli(env, "admin", "create", "--username", username, "--password", password, "--role", role).stdout
    seed = parse_qs(urlparse(out.strip().splitlines()[-1]).query)["secret"][0]
    r1 = httpx.post(gw.url + "/auth/login", json={"username": username, "password": password}, timeout=10)
    assert r1.status_code == 200, r1.text
    pending = r1.headers["set-cookie"].split(";", 1)[0]
    r2 = httpx.post(gw.url + "/auth/login/totp", json={"code": pyotp.TOTP(seed).now()},
                    headers={"Cookie": pending}, timeout=10)
    assert r2.status_code == 200, r2.text
    session = next(c.split(";", 1)[0] for c in r2.headers.get_list("set-cookie") if "palisade_session=" in c)
    return {"Cookie": session, "X-CSRF-Token": r2.json()["csrf_token"]}
