"""Rate limits and quotas: reserve before the call, settle after."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.authn.principal import Principal


@dataclass(frozen=True, slots=True)
class Scope:
    """One limited bucket a request counts against (``principal``/``department``/``model`` + its subject).

    A field of 0 means unlimited at this scope.
    """

    kind: str
    subject: str
    requests_per_min: int = 0
    tokens_per_min: int = 0
    concurrency: int = 0
    daily_tokens: int = 0

    @property
    def key(self) -> str:
        return f"pal:lim:{self.kind}:{self.subject}"


#: kind codes of the reserve script's "left" entries (gateway/limits/gcra.py): name and window in seconds
_WINDOWED = {1: ("requests_per_minute", 60), 2: ("tokens_per_minute", 60), 3: ("daily_tokens", 86400)}


@dataclass(slots=True)
class Reservation:
    principal_id: str
    model: str
    tokens: int
    token: str = ""  # limiter-specific handle (the reservation id in the concurrency sets)
    scopes: tuple[Scope, ...] = field(default_factory=tuple)
    day: int = 0  # the UTC day number the daily quota was charged to (settle refunds that day)
    settled: bool = False
    #: after a successful reserve: (scope index 1-based, kind code, remaining, reset_s) per windowed limit
    left: list[tuple[int, int, int, int]] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers) for a success: every
        windowed limit that applied, with what is left after this request (same names as on a 429). A new dict
        each call (the caller adds its own headers to it)."""
        if not self.left:
            return {}
        policies, states = [], []
        for index, code, remaining, reset in self.left:
            scope = self.scopes[index - 1]
            name, window = _WINDOWED[code]
            quota = (scope.requests_per_min, scope.tokens_per_min, scope.daily_tokens)[code - 1]
            label = f'"{scope.kind}.{name}"'
            policies.append(f"{label};q={quota};w={window}")
            states.append(f"{label};r={max(0, remaining)};t={max(0, reset)}")
        return {"ratelimit-policy": ", ".join(policies), "ratelimit": ", ".join(states)}


class Limiter(Protocol):
    async def reserve(
        self, principal: Principal, model: str, tokens: int, *, priority: int | None = None
    ) -> Reservation:
        """Reserve a request slot and ``tokens``; raise RateLimited (429) or ServiceUnavailable (503)."""

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Return the unused part of the reservation and release the concurrency slot."""

    def release(self, reservation: Reservation, used_tokens: int) -> None:
        """``settle`` without waiting (after the answer left); a later ``reserve`` waits until it reached the store."""
