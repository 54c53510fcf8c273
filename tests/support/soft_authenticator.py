"""A software FIDO2 authenticator plus the browser's part of WebAuthn, for tests of the real ceremonies.

It answers ``PublicKeyCredentialCreationOptions`` / ``...RequestOptions`` (the JSON the gateway sends) with the
JSON a browser would post back: "none" attestation, an ES256 key pair, authenticatorData carrying the SHA-256 of
the relying party id, the flags and a signature counter, and the COSE_Key of the credential (CBOR via ``cbor2``).
Layouts: WebAuthn Level 2 §6.1 (authenticator data), §6.5.1 (attested credential data), §8.7 ("none").
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

FLAG_UP, FLAG_UV, FLAG_AT = 0x01, 0x04, 0x40
AAGUID = bytes(16)  # "none" attestation: no authenticator model is claimed


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _cose_es256(public: ec.EllipticCurvePublicKey) -> bytes:
    numbers = public.public_numbers()
    # kty EC2 (1: 2), alg ES256 (3: -7), crv P-256 (-1: 1), x (-2), y (-3)
    return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})


def _client_data(kind: str, challenge: str, origin: str) -> bytes:
    return json.dumps(
        {"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False}, separators=(",", ":")
    ).encode()


@dataclass
class SoftAuthenticator:
    """One credential on one software security key. ``sign_count`` goes up by one per assertion."""

    origin: str
    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sign_count: int = 0
    rp_id: str | None = None

    def create(self, options: dict[str, Any], *, rp_id: str | None = None) -> dict[str, Any]:
        """navigator.credentials.create(): a registration response for these creation options."""
        self.rp_id = rp_id or options["rp"]["id"]
        cred_data = (
            AAGUID
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + _cose_es256(self.private_key.public_key())
        )
        auth_data = self._auth_data(FLAG_UP | FLAG_UV | FLAG_AT, self.sign_count) + cred_data
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = _client_data("webauthn.create", options["challenge"], self.origin)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {"clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation)},
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        }

    def get(self, options: dict[str, Any], *, counter: int | None = None) -> dict[str, Any]:
        """navigator.credentials.get(): an assertion over these request options. ``counter`` forces the signature
        counter (a cloned key, or a replayed count); otherwise the key's own counter goes up by one."""
        allowed = {c["id"] for c in options.get("allowCredentials") or []}
        assert not allowed or b64url(self.credential_id) in allowed, "the server did not ask for this key"
        if counter is None:
            self.sign_count += 1
            counter = self.sign_count
        auth_data = self._auth_data(FLAG_UP | FLAG_UV, counter, rp_id=options.get("rpId"))
        client_data = _client_data("webauthn.get", options["challenge"], self.origin)
        signature = self.private_key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        }

    def _auth_data(self, flags: int, counter: int, *, rp_id: str | None = None) -> bytes:
        rp = rp_id or self.rp_id
        assert rp, "create() first, or pass the options' rpId"
        return hashlib.sha256(rp.encode()).digest() + bytes([flags]) + struct.pack(">I", counter)
