"""The limit algorithm, once in Lua (Redis, on the server's clock) and once in Python (embedded mode, in memory).

Per scope: requests/min and tokens/min are GCRA buckets (a theoretical arrival time ``tat``; a request of cost c
fits when ``tat + c*T - now <= 60 s``, ``T = 60 / limit``: a full minute's worth may burst); concurrency is a
set of reservation ids with lease expiries (a crashed replica's slots expire); the daily quota is a counter per
UTC day. Reserve checks every scope first and commits only if all fit; settle refunds unused tokens and frees
the concurrency slot. Each is one atomic script call: one round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.limits import Scope

WINDOW_S = 60.0
DAY_S = 86400

#: KEYS: one base key per scope. ARGV: id, tokens, lease_s, then per scope rpm, tpm, conc, daily.
#: Returns {1, day, then per windowed limit: scope index (1-based), kind code (1 rpm, 2 tpm, 3 daily), remaining,
#: reset_s} (what is left after this request, for the RateLimit header of a success) or
#: {0, scope index (1-based), kind, retry_ms, limit, remaining, reset_s}.
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local day = math.floor(now / 86400)
local id, tokens, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local plan, left = {}, {}
for i = 1, #KEYS do
  local b = 3 + (i - 1) * 4
  local rpm, tpm, conc, daily = tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), tonumber(ARGV[b+3]), tonumber(ARGV[b+4])
  local k = KEYS[i]
  if rpm > 0 then
    local T = 60 / rpm
    local tat = math.max(tonumber(redis.call('GET', k .. ':rpm') or 0), now)
    local new = tat + T
    if new - now > 60 then
      return {0, i, 'requests_per_minute', math.ceil((new - now - 60) * 1000), rpm, 0, math.ceil(tat - now)}
    end
    plan[#plan+1] = {'SET', k .. ':rpm', tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000}
    left[#left+1] = {i, 1, math.floor((60 - (new - now)) / T + 1e-6), math.ceil(new - now)}
  end
  if tpm > 0 then
    local T = 60 / tpm
    local tat = math.max(tonumber(redis.call('GET', k .. ':tpm') or 0), now)
    local new = tat + tokens * T
    if tokens > tpm then
      return {0, i, 'tokens_per_minute', 60000, tpm, math.max(0, math.floor((60 - (tat - now)) / T)), 60}
    end
    if new - now > 60 then
      return {0, i, 'tokens_per_minute', math.ceil((new - now - 60) * 1000), tpm,
              math.max(0, math.floor((60 - (tat - now)) / T)), math.ceil(tat - now)}
    end
    plan[#plan+1] = {'SET', k .. ':tpm', tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000}
    left[#left+1] = {i, 2, math.floor((60 - (new - now)) / T + 1e-6), math.ceil(new - now)}
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', k .. ':conc', '-inf', now)
    if redis.call('ZCARD', k .. ':conc') >= conc then
      return {0, i, 'concurrency', 1000, conc, 0, 1}
    end
    plan[#plan+1] = {'ZADD', k .. ':conc', tostring(now + lease), id}
    plan[#plan+1] = {'PEXPIRE', k .. ':conc', math.ceil(lease * 1000) + 1000}
  end
  if daily > 0 then
    local dk = k .. ':day:' .. day
    local used = tonumber(redis.call('GET', dk) or 0)
    if used + tokens > daily then
      local reset = math.ceil((day + 1) * 86400 - now)
      return {0, i, 'daily_tokens', reset * 1000, daily, math.max(0, daily - used), reset}
    end
    plan[#plan+1] = {'INCRBY', dk, tokens}
    left[#left+1] = {i, 3, daily - used - tokens, math.ceil((day + 1) * 86400 - now)}
    plan[#plan+1] = {'EXPIRE', dk, 172800}
  end
end
for _, cmd in ipairs(plan) do redis.call(unpack(cmd)) end
local out = {1, day}
for _, l in ipairs(left) do
  out[#out+1] = l[1]; out[#out+1] = l[2]; out[#out+1] = l[3]; out[#out+1] = l[4]
end
return out
"""

#: settles one or more reservations in one call: ARGV is, per reservation, its id, reserved and used tokens, the
#: day it charged, its number of scopes n, then (tpm, concurrency, daily) per scope; KEYS are the scopes' keys in
#: the same order (a batch of settles queued behind each other costs one round trip)
SETTLE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local a, kk = 1, 0
while a <= #ARGV do
  local id, reserved, used, day, n = ARGV[a], tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), ARGV[a+3], tonumber(ARGV[a+4])
  local refund = reserved - used
  for i = 1, n do
    local b = a + 5 + (i - 1) * 3
    local tpm, conc, daily = tonumber(ARGV[b]), tonumber(ARGV[b+1]), tonumber(ARGV[b+2])
    local k = KEYS[kk + i]
    if tpm > 0 and refund ~= 0 then
      local tat = tonumber(redis.call('GET', k .. ':tpm') or 0)
      if tat > now or refund < 0 then
        local new = math.max(tat, now) - refund * 60 / tpm
        if new > now then
          redis.call('SET', k .. ':tpm', tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
        else
          redis.call('DEL', k .. ':tpm')
        end
      end
    end
    if conc > 0 then redis.call('ZREM', k .. ':conc', id) end
    if daily > 0 and refund ~= 0 then
      local dk = k .. ':day:' .. day
      local left = redis.call('DECRBY', dk, refund)
      if left < 0 then redis.call('SET', dk, 0, 'EX', 172800) end
    end
  end
  a = a + 5 + n * 3
  kk = kk + n
end
return 1
"""


def _as_function(name: str, script: str) -> str:
    """``script`` as a local Lua function whose parameters shadow the globals KEYS and ARGV it reads."""
    return f"local function {name}(KEYS, ARGV)\n{script}\nend\n"


#: the settles released since the last call, then a reserve, in ONE script call (one round trip for both): ARGV
#: starts with the settles' number of keys and of args, then their SETTLE_LUA args, then the RESERVE_LUA args;
#: KEYS are the settles' keys, then the reserve's. The settles apply even when the reserve is refused.
SETTLE_THEN_RESERVE_LUA = (
    _as_function("settle", SETTLE_LUA) + _as_function("reserve", RESERVE_LUA) + """
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local sk, sa, rk, ra = {}, {}, {}, {}
for i = 1, #KEYS do if i <= nk then sk[#sk+1] = KEYS[i] else rk[#rk+1] = KEYS[i] end end
for i = 3, #ARGV do if i <= na + 2 then sa[#sa+1] = ARGV[i] else ra[#ra+1] = ARGV[i] end end
settle(sk, sa)
return reserve(rk, ra)
"""
)


@dataclass(frozen=True, slots=True)
class Refusal:
    scope: Scope
    limit_name: str  # requests_per_minute / tokens_per_minute / concurrency / daily_tokens
    retry_after_s: float
    limit: int
    remaining: int
    reset_s: int


class MemoryBuckets:
    """The same algorithm over a dict, for the embedded single-process mode (the event loop serialises calls)."""

    def __init__(self) -> None:
        self.tat: dict[str, float] = {}
        self.leases: dict[str, dict[str, float]] = {}
        self.daily: dict[str, int] = {}

    def reserve(
        self,
        now: float,
        scopes: tuple[Scope, ...],
        rid: str,
        tokens: int,
        lease_s: float,
        left: list[tuple[int, int, int, int]] | None = None,
    ) -> tuple[int, Refusal | None]:
        """``left`` (when given) receives what the Lua script returns after a success: (scope index, kind code,
        remaining, reset_s) per windowed limit."""
        day = math.floor(now / DAY_S)
        plan: list[tuple[str, str, float]] = []
        after: list[tuple[int, int, int, int]] = []
        for n, s in enumerate(scopes, 1):  # n: the scope's 1-based index, as in the Lua script
            k = s.key
            if s.requests_per_min > 0:
                T = WINDOW_S / s.requests_per_min
                tat = max(self.tat.get(k + ":rpm", 0.0), now)
                new = tat + T
                if new - now > WINDOW_S:
                    return day, Refusal(
                        s,
                        "requests_per_minute",
                        new - now - WINDOW_S,
                        s.requests_per_min,
                        0,
                        math.ceil(tat - now),
                    )
                plan.append(("tat", k + ":rpm", new))
                after.append((n, 1, math.floor((WINDOW_S - (new - now)) / T + 1e-6), math.ceil(new - now)))
            if s.tokens_per_min > 0:
                T = WINDOW_S / s.tokens_per_min
                tat = max(self.tat.get(k + ":tpm", 0.0), now)
                new = tat + tokens * T
                remaining = max(0, math.floor((WINDOW_S - (tat - now)) / T))
                if tokens > s.tokens_per_min:
                    return day, Refusal(s, "tokens_per_minute", WINDOW_S, s.tokens_per_min, remaining, 60)
                if new - now > WINDOW_S:
                    return day, Refusal(
                        s,
                        "tokens_per_minute",
                        new - now - WINDOW_S,
                        s.tokens_per_min,
                        remaining,
                        math.ceil(tat - now),
                    )
                plan.append(("tat", k + ":tpm", new))
                after.append((n, 2, math.floor((WINDOW_S - (new - now)) / T + 1e-6), math.ceil(new - now)))
            if s.concurrency > 0:
                held = {i: exp for i, exp in self.leases.get(k, {}).items() if exp > now}
                self.leases[k] = held
                if len(held) >= s.concurrency:
                    return day, Refusal(s, "concurrency", 1.0, s.concurrency, 0, 1)
                plan.append(("lease", k, now + lease_s))
            if s.daily_tokens > 0:
                dk = f"{k}:day:{day}"
                used = self.daily.get(dk, 0)
                if used + tokens > s.daily_tokens:
                    reset = math.ceil((day + 1) * DAY_S - now)
                    return day, Refusal(
                        s, "daily_tokens", reset, s.daily_tokens, max(0, s.daily_tokens - used), reset
                    )
                plan.append(("day", dk, tokens))
                after.append((n, 3, s.daily_tokens - used - tokens, math.ceil((day + 1) * DAY_S - now)))
        for op, k, v in plan:
            if op == "tat":
                self.tat[k] = v
            elif op == "lease":
                self.leases.setdefault(k, {})[rid] = v
            else:
                self.daily[k] = self.daily.get(k, 0) + int(v)
        if left is not None:
            left.extend(after)
        return day, None

    def settle(
        self, now: float, scopes: tuple[Scope, ...], rid: str, reserved: int, used: int, day: int
    ) -> None:
        refund = reserved - used
        for s in scopes:
            k = s.key
            if s.tokens_per_min > 0 and refund:
                tat = self.tat.get(k + ":tpm", 0.0)
                if tat > now or refund < 0:
                    self.tat[k + ":tpm"] = max(tat, now) - refund * WINDOW_S / s.tokens_per_min
            if s.concurrency > 0:
                self.leases.get(k, {}).pop(rid, None)
            if s.daily_tokens > 0 and refund:
                dk = f"{k}:day:{day}"
                self.daily[dk] = max(0, self.daily.get(dk, 0) - refund)
