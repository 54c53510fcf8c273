"""Helpers for the identity tests (no tests here): an in-process gateway on real HTTP semantics, and logins.

The app is the real one (``create_app``) behind ``litestar.testing.AsyncTestClient`` on an https base URL (the
session cookies are ``Secure``), in front of a fake OpenAI-compatible upstream (a real HTTP server).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from litestar import Litestar

from gateway.app import create_app, services_of
from gateway.authn import totp
from gateway.db.migrate import upgrade
from gateway.settings import Settings, normalise_db_url

BASE_URL = "https://testserver.local"
PASSWORD = "correct horse battery staple 42"


def identity_settings(
    data_dir: Path, upstream_url: str, database_url: str | None = None, **kw: Any
) -> Settings:
    models = data_dir / "models.yaml"
    models.write_text(
        f'models:\n  - alias: mock\n    backend: openai\n    url: "{upstream_url}"\n'
        f"    upstream_model: fake-model\n"
    )
    settings = Settings(
        data_dir=data_dir,
        database_url=normalise_db_url(database_url or f"sqlite:///{data_dir / 'p.db'}"),
        models_file=models,
        issuer=BASE_URL,
        log_level="warning",
        login_slowdown_after=10_000,
    )
    return replace(settings, **kw)


@contextlib.asynccontextmanager
async def gateway_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Litestar]]:
    """The app's lifespan runs in this event loop (``app.lifespan()``); requests go through httpx's ASGI
    transport with peer 127.0.0.1 (policy lets people administer only from the internal network)."""
    upgrade(settings)
    app = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        # one task enters and exits the lifespan (its cancel scopes must not cross tasks)
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run_lifespan())
    await asyncio.wait([task, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # startup failed: raise it here
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client, app
    finally:
        stop.set()
        await task


def seed_of(otpauth_uri: str) -> str:
    return parse_qs(urlsplit(otpauth_uri).query)["secret"][0]


@dataclass
class Person:
    id: str
    username: str
    seed: str
    recovery_codes: list[str]
    password: str = PASSWORD
    step_offset: int = 0  # TOTP codes are single use: each login uses the next step's code

    def next_code(self) -> str:
        code = totp.code_at(self.seed, time.time() + 30 * self.step_offset)
        self.step_offset += 1
        return code


_counter = [0]


async def make_person(app: Litestar, *roles: str, username: str | None = None, **attributes: Any) -> Person:
    _counter[0] += 1
    name = username or f"person{_counter[0]}_{int(time.time() * 1000) % 100000}"
    enrol = await services_of(app).identity.users.create(
        name, PASSWORD, roles=list(roles or ("viewer",)), attributes=attributes
    )
    return Person(enrol.user_id, name, seed_of(enrol.otpauth_uri), enrol.recovery_codes)


async def login(client: httpx.AsyncClient, person: Person) -> str:
    """Password + TOTP; returns the CSRF token (the session cookie stays in the client's jar)."""
    r = await client.post("/auth/login", json={"username": person.username, "password": person.password})
    assert r.status_code == 200, r.text
    r = await client.post("/auth/login/totp", json={"code": person.next_code()})
    assert r.status_code == 200, r.text
    return r.json()["csrf_token"]


def assert_error_shape(r: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and {"type", "message", "request_id"} <= set(body["error"]), body
    return body["error"]
