"""Rate limits that hold across server processes: lookups per account (调阅), one-time
codes per client address (患者端登录) and failed logins per user and address.

The issue asks for rate limits on lookup and login (no enumeration of patients); with
several ``huren serve`` processes behind a load balancer, counts kept in one process let
a caller through N times as often. ``RateCounters`` keeps them where every process sees
them — the database (``huren.adapters.db.ratelimits``) — and ``MemoryRateCounters`` in
the process, for a single process and for tests.

Semantics (both implementations): events are counted per key in millisecond buckets; an
event at time t counts while t > now − window, as the in-process sliding window did. A
refused hit is not counted (a caller who keeps trying is let in again once the oldest
counted event leaves the window)."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from huren.domain.sharing import RateLimit, rate_limited


@dataclass(frozen=True, slots=True)
class CounterHit:
    allowed: bool
    count: int  # events in the window (this one included when allowed)
    retry_after: int = 0  # whole seconds until the oldest counted event leaves the window


class RateCounters(Protocol):
    def hit(self, key: str, now: datetime, rule: RateLimit) -> CounterHit:
        """Count one event for ``key`` unless the window already holds ``rule.limit``;
        atomic against every other caller of the same store."""
        ...

    def add(self, key: str, now: datetime, rule: RateLimit) -> None:
        """Count one event unconditionally (e.g. a failed login)."""
        ...

    def count(self, key: str, now: datetime, rule: RateLimit) -> int:
        """Events for ``key`` in the window ending at ``now``."""
        ...

    def clear(self, key: str) -> None:
        """Forget every event of ``key`` (e.g. after a successful login)."""
        ...


def epoch_ms(at: datetime) -> int:
    return math.floor(at.timestamp() * 1000)


def window_ms(rule: RateLimit) -> int:
    return max(1, math.ceil(rule.window.total_seconds() * 1000))


def retry_seconds(oldest_ms: int, now_ms: int, rule: RateLimit) -> int:
    """Whole seconds (at least 1) until an event at ``oldest_ms`` leaves the window."""
    return max(1, (oldest_ms + window_ms(rule) - now_ms) // 1000 + 1)


class MemoryRateCounters:
    """``RateCounters`` held in this process (one embedded process; tests)."""

    def __init__(self) -> None:
        self._events: dict[str, deque[int]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now_ms: int, rule: RateLimit) -> deque[int]:
        q = self._events.setdefault(key, deque())
        horizon = now_ms - window_ms(rule)
        while q and q[0] <= horizon:
            q.popleft()
        return q

    def hit(self, key: str, now: datetime, rule: RateLimit) -> CounterHit:
        now_ms = epoch_ms(now)
        with self._lock:
            q = self._recent(key, now_ms, rule)
            if len(q) >= rule.limit:
                return CounterHit(False, len(q), retry_seconds(q[0], now_ms, rule))
            q.append(now_ms)
            return CounterHit(True, len(q))

    def add(self, key: str, now: datetime, rule: RateLimit) -> None:
        now_ms = epoch_ms(now)
        with self._lock:
            self._recent(key, now_ms, rule).append(now_ms)

    def count(self, key: str, now: datetime, rule: RateLimit) -> int:
        with self._lock:
            return len(self._recent(key, epoch_ms(now), rule))

    def clear(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


class Limiter:
    """At most ``rule.limit`` events per key per ``rule.window``, counted in ``counters``."""

    def __init__(self, rule: RateLimit, counters: RateCounters) -> None:
        self.rule = rule
        self.counters = counters

    def hit(self, key: str, now: datetime, message: str = "查询过于频繁，请稍后再试") -> None:
        """Count one event for ``key`` or raise ``RateLimited`` when over the limit."""
        outcome = self.counters.hit(key, now, self.rule)
        if not outcome.allowed:
            raise rate_limited(self.rule, outcome.retry_after, message)
