"""Keep the outbox within Slack's rate limits instead of running into them.

Slack allows about one `chat.postMessage` per second per channel (short bursts tolerated) and rate-limits
other methods per workspace by tier (`chat.update` is tier 3: about 50 a minute). The dispatcher asks the
pacer before each send; a row whose channel is not ready yet is skipped for now, so one busy channel never
holds up the others. A 429's Retry-After holds the key that hit it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """`burst` calls at once, then one every `interval` seconds."""

    interval: float
    burst: int = 1


@dataclass(frozen=True)
class SlackLimits:
    post_per_channel: Rate = Rate(interval=1.0, burst=1)  # chat.postMessage, per channel
    update: Rate = Rate(interval=1.2, burst=10)  # chat.update, tier 3, per workspace


class _Bucket:
    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.updated = now
        self.held_until = 0.0

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.rate.burst), self.tokens + elapsed / self.rate.interval)
        # Never backwards: a moment read before another caller's would count the time between twice.
        self.updated = max(self.updated, now)

    def ready_in(self, now: float) -> float:
        self._refill(now)
        wait_for_token = 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) * self.rate.interval
        return max(wait_for_token, self.held_until - now, 0.0)

    def take(self, now: float, count: int) -> None:
        self._refill(now)
        self.tokens -= count  # may go below zero: a multi-call row delays the next caller instead


class Pacer:
    """Token buckets keyed by what Slack limits: `post:<channel>` and `update`."""

    def __init__(self, limits: SlackLimits | None = None, monotonic: Callable[[], float] = time.monotonic):
        self.limits = limits or SlackLimits()
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            rate = self.limits.update if key == "update" else self.limits.post_per_channel
            bucket = self._buckets[key] = _Bucket(rate, now)
        return bucket

    def ready_in(self, keys: Iterable[str]) -> float:
        """Seconds until every key has a free slot (0 when a call may go now)."""
        with self._lock:  # the moment read under the lock: callers' moments then come in order
            now = self._monotonic()
            return max((self._bucket(key, now).ready_in(now) for key in keys), default=0.0)

    def take(self, keys: Iterable[str], count: int = 1) -> None:
        with self._lock:
            now = self._monotonic()
            for key in keys:
                self._bucket(key, now).take(now, count)

    def hold(self, key: str, seconds: float) -> None:
        """Slack said 429 with Retry-After: nothing more for this key until then."""
        with self._lock:
            now = self._monotonic()
            bucket = self._bucket(key, now)
            bucket.held_until = max(bucket.held_until, now + seconds)
            bucket.tokens = min(bucket.tokens, 0.0)


POST_KEY_PREFIX = "post:"


def post_key(channel: str) -> str:
    return f"{POST_KEY_PREFIX}{channel}"


def posted_to(key: str | None) -> str | None:
    """The channel or user of a post's key (`post_key`); None for other keys."""
    return key.removeprefix(POST_KEY_PREFIX) if key and key.startswith(POST_KEY_PREFIX) else None


UPDATE_KEY = "update"
