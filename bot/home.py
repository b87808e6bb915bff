"""App Home: render and publish each person's home tab from the database.

Only people who have opened App Home at least once have it republished after a change: a stage approved
by a large user group must not cost a Slack call per member who never looks at the tab.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from bot import views
from bot.approvers import ApproverLookupFailed
from bot.workflow import Workflow
from storage.db import transaction
from storage.models import AppHomeViewer, Delegation

log = logging.getLogger(__name__)


def _upsert_viewer(insert: Any) -> Any:
    statement = insert(AppHomeViewer.__table__)
    return statement.on_conflict_do_update(
        index_elements=["user_id"], set_={"last_opened_at": statement.excluded.last_opened_at}
    )


_UPSERT_VIEWER = {"sqlite": _upsert_viewer(sqlite.insert), "postgresql": _upsert_viewer(postgresql.insert)}


class HomePublisher:
    def __init__(self, workflow: Workflow, client: WebClient) -> None:
        self.workflow = workflow
        self.client = client

    def view_for(self, user_id: str) -> dict[str, Any]:
        workflow = self.workflow
        return views.home_view(
            user_id,
            mine=workflow.my_requests(user_id),
            awaiting=workflow.awaiting_decision(user_id),
            delegations=workflow.my_delegations(user_id),
            policy=workflow.policy,
            overview=workflow.overview() if workflow.is_lead(user_id) else None,
            now=workflow.clock(),
        )

    def opened(self, user_id: str) -> None:
        """Record that the user looks at App Home, then show it to them fresh."""
        with transaction(self.workflow.db) as session:
            # One statement: two opens at once (two devices, Slack's retry) each read "no row" and each
            # inserted, and on PostgreSQL the second failed on the key and its view was never published.
            upsert = _UPSERT_VIEWER[session.get_bind().dialect.name]
            session.execute(upsert, {"user_id": user_id, "last_opened_at": self.workflow.clock()})
        self.publish(user_id)

    def publish(self, user_id: str) -> None:
        self.client.views_publish(user_id=user_id, view=self.view_for(user_id))

    def publish_for(self, payload: dict[str, Any]) -> None:
        """Outbox sender: refresh the homes of the named users and principals' members who use App Home."""
        users = set(payload.get("users") or [])
        try:
            users |= self.workflow.approvers.members(tuple(payload.get("principals") or ()))
        except ApproverLookupFailed as exc:
            log.warning("home refresh limited to named users: %s", exc)
        if not users:
            return
        today = self.workflow.clock().astimezone(self.workflow.policy.zone).date()
        with transaction(self.workflow.db, read_only=True) as session:
            # Their deputies today too: "Awaiting my decision" lists a principal's stages for them.
            users |= set(
                session.scalars(
                    select(Delegation.deputy_id).where(
                        Delegation.approver_id.in_(users),
                        Delegation.revoked_at.is_(None),
                        Delegation.starts_on <= today,
                        Delegation.ends_on >= today,
                    )
                )
            )
            viewers = set(
                session.scalars(select(AppHomeViewer.user_id).where(AppHomeViewer.user_id.in_(users)))
            )
        for user_id in sorted(viewers):
            self.publish(user_id)
