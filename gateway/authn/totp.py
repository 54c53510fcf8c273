"""TOTP (RFC 6238) with pyotp: 30 s steps, ±1 step of drift, 160-bit seeds from the OS CSPRNG.

Only the arithmetic lives here. Replay protection is in the user store: a code is accepted for a step only if that
step is later than the last accepted one, through a conditional UPDATE, so two concurrent submissions of one
code have exactly one winner.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time

import pyotp
import segno

STEP_S = 30
DRIFT_STEPS = 1
SEED_BYTES = 20  # 160 bits (RFC 4226 recommends 160)
ISSUER = "Palisade"


def new_seed() -> str:
    return base64.b32encode(secrets.token_bytes(SEED_BYTES)).decode()


def matching_step(seed: str, code: str, *, at: float | None = None) -> int | None:
    """The time step (now-1, now, now+1) whose code equals ``code``, or None."""
    if not (isinstance(code, str) and len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(seed, interval=STEP_S)
    now = time.time() if at is None else at
    current = int(now // STEP_S)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # compare every candidate (no early exit) so timing says nothing about which step matched
        if hmac.compare_digest(totp.at(step * STEP_S), code):
            found = step
    return found


def code_at(seed: str, at: float | None = None) -> str:
    return pyotp.TOTP(seed, interval=STEP_S).at(time.time() if at is None else at)


def otpauth_uri(seed: str, account: str) -> str:
    return pyotp.TOTP(seed, interval=STEP_S).provisioning_uri(name=account, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    return segno.make(uri, error="m").svg_inline(scale=4)


def qr_terminal(uri: str) -> str:
    import io

    buf = io.StringIO()
    segno.make(uri, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()
