"""Passwords (NIST SP 800-63B): argon2id hashes, 8..1024 characters, common and breached passwords refused.

``common_passwords.txt.gz`` holds the 11,611 passwords of at least 8 characters among the 30,000 most frequent
ones in leaked password corpora (taken from the zxcvbn package's frequency list, MIT licence); it ships with the
package, so nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # generous (no cap below 64), bounded so hashing cannot be used for denial of service

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """Verified against when the account does not exist, so both paths cost one argon2 verification. Made once per
    process (the gateway makes it at start-up, so even its first login attempt costs the same either way), not at
    import: every CLI call would pay ~0.1 s for it."""
    return _hasher.hash("palisade-no-such-account")


class WeakPassword(ValueError):
    """The password breaks the policy; the message says which rule, never the password."""


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    data = gzip.decompress((Path(__file__).parent / "common_passwords.txt.gz").read_bytes())
    return frozenset(data.decode().split("\n"))


def check_policy(password: str, *, username: str | None = None) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_LENGTH} characters")
    if password.lower() in common_passwords():
        raise WeakPassword("password is too common (found in breached password lists)")
    if username and password.lower() == username.lower():
        raise WeakPassword("password must not be the user name")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-work check: a missing account still costs one argon2 verification."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(password_hash or dummy_hash(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
