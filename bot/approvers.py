"""Who may decide a stage: the stage's named users plus the members of its Slack user groups.

Group membership is read from Slack (`usergroups.users.list`) and cached briefly, so someone removed
from a group loses the right to decide within `ttl_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.policy import Stage

log = logging.getLogger(__name__)


class ApproverLookupFailed(Exception):
    """Slack could not tell us who is in a user group; deciding is refused rather than guessed."""


class GroupSource(Protocol):
    def members(self, group_id: str) -> frozenset[str]: ...


class SlackGroupSource:
    def __init__(self, client: WebClient) -> None:
        self._client = client

    def members(self, group_id: str) -> frozenset[str]:
        try:
            response = self._client.usergroups_users_list(usergroup=group_id)
        except SlackApiError as exc:
            raise ApproverLookupFailed(
                f"usergroups.users.list {group_id}: {exc.response.get('error')}"
            ) from None
        except SlackClientError as exc:
            raise ApproverLookupFailed(f"usergroups.users.list {group_id}: {type(exc).__name__}") from None
        except OSError as exc:
            raise ApproverLookupFailed(f"usergroups.users.list {group_id}: {exc}") from None
        return frozenset(response.get("users") or [])


class StaticGroupSource:
    """Fixed membership, for tests and for policies that name users only."""

    def __init__(self, groups: dict[str, set[str]] | None = None) -> None:
        self.groups = groups or {}

    def members(self, group_id: str) -> frozenset[str]:
        return frozenset(self.groups.get(group_id, set()))


class ApproverDirectory:
    def __init__(
        self, source: GroupSource, ttl_seconds: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = source
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        # One look-up of a group at a time: threads that miss the cache together wait for the first one's
        # answer rather than each asking Slack (a Tier 2 method), and each being rate-limited.
        self._asking: dict[str, threading.Lock] = {}

    def _fresh(self, group_id: str) -> frozenset[str] | None:
        with self._lock:
            cached = self._cache.get(group_id)
        return cached[1] if cached and self._monotonic() - cached[0] < self._ttl else None

    def _group(self, group_id: str) -> frozenset[str]:
        members = self._fresh(group_id)
        if members is not None:
            return members
        with self._lock:
            asking = self._asking.setdefault(group_id, threading.Lock())
        with asking:
            members = self._fresh(group_id)  # asked by another thread meanwhile?
            if members is not None:
                return members
            now = self._monotonic()
            members = self._source.members(group_id)
            with self._lock:
                self._cache[group_id] = (now, members)
            return members

    def includes(self, principals: tuple[str, ...], user_id: str) -> bool:
        """Whether `user_id` is one of the user IDs or a member of one of the user groups listed."""
        if user_id in principals:
            return True
        return any(user_id in self._group(p) for p in principals if p.startswith("S"))

    def members(self, principals: tuple[str, ...]) -> set[str]:
        """Every user the principals name, groups expanded."""
        users = {p for p in principals if not p.startswith("S")}
        for group in (p for p in principals if p.startswith("S")):
            users |= self._group(group)
        return users

    def is_approver(self, stage: Stage, user_id: str) -> bool:
        return self.includes(stage.approvers, user_id)
