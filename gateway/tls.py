"""TLS for ``palisade serve``: TLS 1.2 minimum, modern AEAD ciphers, HSTS; and ``palisade dev-cert`` (a local CA
and a server certificate for localhost in the data dir, to try it).

uvicorn builds the server context; ``hardened_context`` is its ``ssl_context_factory`` and tightens it (uvicorn's
own default cipher string is the broad "TLSv1"). TLS 1.3 suites are OpenSSL's defaults (all AEAD).
To Postgres and Redis, TLS is set in their URLs: ``…?sslmode=verify-full&sslrootcert=ca.pem`` (psycopg) and
``rediss://…?ssl_cert_reqs=required&ssl_ca_certs=ca.pem``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: TLS 1.2 suites: forward secret (ECDHE) and AEAD only
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!RSA:!SHA1:!CBC"
HSTS = ("strict-transport-security", "max-age=63072000; includeSubDomains")


def hardened_context(_config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return ctx


def uvicorn_tls_options(cert: Path | None, key: Path | None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``: none without a certificate (plain HTTP), else TLS + HSTS."""
    if cert is None or key is None:
        return {}
    for path in (cert, key):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file {path} does not exist (try `palisade dev-cert`)")
    return {
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_context_factory": hardened_context,
        "ssl_ciphers": MODERN_CIPHERS,
        "headers": [HSTS],
    }


def make_dev_cert(
    out_dir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> dict[str, Path]:
    """A local CA (ca.pem, ca-key.pem) and a server certificate signed by it (server.pem, server-key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Palisade development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": out_dir / "ca.pem",
        "ca_key": out_dir / "ca-key.pem",
        "cert": out_dir / "server.pem",
        "key": out_dir / "server-key.pem",
    }
    pem = serialization.Encoding.PEM
    for name, k in (("ca_key", ca_key), ("key", key)):
        data = k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))  # chain: leaf then CA
    return paths
