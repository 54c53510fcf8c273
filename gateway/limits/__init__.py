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


@dataclass(slots=True)
class Reservation:
    principal_id: str
    model: str
    tokens: int
    token: str = ""  # limiter-specific handle (the reservation id in the concurrency sets)
    scopes: tuple[Scope, ...] = field(default_factory=tuple)
    day: int = 0  # the UTC day number the daily quota was charged to (settle refunds that day)
    settled: bool = False


class Limiter(Protocol):
    async def reserve(self, principal: Principal, model: str, tokens: int) -> Reservation:
        """Reserve a request slot and ``tokens``; raise RateLimited (429) or ServiceUnavailable (503)."""

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Return the unused part of the reservation and release the concurrency slot."""
