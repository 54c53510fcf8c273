"""No limits: used only where an operator sets PALISADE_LIMITS=off (benchmarks of the bare pipeline)."""

from __future__ import annotations

from gateway.authn.principal import Principal
from gateway.limits import Reservation


class UnlimitedLimiter:
    async def reserve(self, principal: Principal, model: str, tokens: int) -> Reservation:
        return Reservation(principal.id, model, tokens)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        return None
