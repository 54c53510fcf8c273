"""TOTP arithmetic and the password policy (the store-level replay/lockout tests are in integration)."""

from __future__ import annotations

import base64
import time

import pyotp

from gateway.authn import totp
from gateway.authn.passwords import WeakPassword, check_policy, hash_password, verify_password


def test_seed_is_160_bits_from_the_csprng():
    seeds = {totp.new_seed() for _ in range(50)}
    assert len(seeds) == 50
    assert all(len(base64.b32decode(s)) * 8 >= 160 for s in seeds)


def test_window_is_30s_with_one_step_of_drift():
    seed = totp.new_seed()
    now = 1_800_000_015.0
    step = int(now // 30)
    ref = pyotp.TOTP(seed)  # the reference implementation of RFC 6238
    assert totp.matching_step(seed, ref.at(now), at=now) == step
    assert totp.matching_step(seed, ref.at(now - 30), at=now) == step - 1
    assert totp.matching_step(seed, ref.at(now + 30), at=now) == step + 1
    assert totp.matching_step(seed, ref.at(now - 60), at=now) is None
    assert totp.matching_step(seed, ref.at(now + 60), at=now) is None


def test_malformed_codes_never_match():
    seed = totp.new_seed()
    for code in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦", " 12345", None):
        assert totp.matching_step(seed, code) is None  # type: ignore[arg-type]


def test_otpauth_uri_and_qr():
    seed = totp.new_seed()
    uri = totp.otpauth_uri(seed, "alice")
    assert uri.startswith("otpauth://totp/Palisade:alice?") and f"secret={seed}" in uri
    assert totp.qr_svg(uri).startswith("<svg")
    assert any(ch in totp.qr_terminal(uri) for ch in "█▀▄")
    assert totp.code_at(seed, time.time()) == pyotp.TOTP(seed).now()


def test_password_policy():
    for bad in ("short", "password1", "Password123", "qwertyuiop", "alice-pass"):
        try:
            check_policy(bad, username="alice-pass")
        except WeakPassword:
            continue
        raise AssertionError(f"{bad!r} was accepted")
    check_policy("x" * 64 + " long passphrases are fine")  # no cap below 64
    check_policy("correct horse battery staple 42")


def test_argon2id_hashes():
    h = hash_password("correct horse battery staple 42")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct horse battery staple 42")
    assert not verify_password(h, "correct horse battery staple 43")
    assert not verify_password(None, "anything")  # unknown account: same work, no match
    assert not verify_password(h, "x" * 5000)
