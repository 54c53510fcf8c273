"""Rate limits and quotas: reserve before the call, settle after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.authn.principal import Principal


@dataclass(slots=True)
class Reservation:
    principal_id: str
    model: str
    tokens: int
    token: str = ""  # limiter-specific handle


class Limiter(Protocol):
    async def reserve(self, principal: Principal, model: str, tokens: int) -> Reservation:
        """Reserve a request slot and ``tokens``; raise RateLimited (429) or ServiceUnavailable (503)."""

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Return the unused part of the reservation and release the concurrency slot."""
