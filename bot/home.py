"""App Home: render and publish each person's home tab from the database."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient

from bot import views
from bot.approvers import ApproverLookupFailed
from bot.workflow import Workflow

log = logging.getLogger(__name__)


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
        )

    def publish(self, user_id: str) -> None:
        self.client.views_publish(user_id=user_id, view=self.view_for(user_id))

    def publish_for(self, payload: dict[str, Any]) -> None:
        """Outbox sender: refresh the homes of the users named and of the members of the principals."""
        users = set(payload.get("users") or [])
        try:
            users |= self.workflow.approvers.members(tuple(payload.get("principals") or ()))
        except ApproverLookupFailed as exc:
            log.warning("home refresh limited to named users: %s", exc)
        for user_id in sorted(users):
            self.publish(user_id)
