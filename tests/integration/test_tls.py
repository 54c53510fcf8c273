"""TLS on a real `palisade serve`: a TLS 1.1 client is refused, TLS 1.2 and 1.3 clients work, HSTS is sent."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest

from tests.support.server import GatewayProcess, base_env, cli


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.fake_upstreams import fake_upstream

    data = tmp_path_factory.mktemp("tls")
    env = base_env(data)
    out = cli(env, "dev-cert").stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)
    assert Path(exports["PALISADE_TLS_KEY"]).stat().st_mode & 0o077 == 0  # private key not world-readable
    with fake_upstream("ok", "openai") as base:
        models = data / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {base}\n"
            "    upstream_model: fake-model\n"
        )
        env.update(exports, PALISADE_MODELS_FILE=str(models))
        gw = GatewayProcess(env, data / "gw.log", ca=data / "tls" / "ca.pem").start(ready=False)
        yield gw, data / "tls" / "ca.pem"
        gw.stop()


def _handshake(port: int, ca: Path, version: ssl.TLSVersion) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer the old protocol
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version() or ""


def test_tls11_client_is_refused(tls_gateway) -> None:
    gw, ca = tls_gateway
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as err:
        _handshake(gw.port, ca, ssl.TLSVersion.TLSv1_1)
    # refused by the server (alert or hang-up after our TLS 1.1 hello), not by this client's own library
    message = str(err.value).upper()
    assert "NO_PROTOCOLS_AVAILABLE" not in message and "NO_CIPHERS" not in message, message
    assert any(s in message for s in ("PROTOCOL_VERSION", "UNEXPECTED_EOF", "EOF OCCURRED", "RESET")), message


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls12_and_tls13_clients_work(tls_gateway, version: ssl.TLSVersion) -> None:
    gw, ca = tls_gateway
    assert (
        _handshake(gw.port, ca, version)
        == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    )
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = version
    r = httpx.get(gw.url + "/healthz", verify=ctx)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_tls12_offers_only_forward_secret_aead_ciphers(tls_gateway) -> None:
    gw, ca = tls_gateway
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA:AES256-SHA:@SECLEVEL=0")  # legacy RSA-kx CBC suites only
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_plain_http_is_not_served(tls_gateway) -> None:
    gw, _ = tls_gateway
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gw.port}/healthz", timeout=5)
