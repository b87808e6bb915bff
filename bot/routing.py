"""Choose the ordered review stages for a request: first matching rule wins, else the default route."""

from __future__ import annotations

from dataclasses import dataclass

from bot.forms import RequestForm
from bot.policy import Policy, RouteCondition, Tool

DEFAULT_ROUTE_NAME = "default"


@dataclass(frozen=True)
class ChosenRoute:
    name: str
    stage_ids: tuple[str, ...]


def _matches(condition: RouteCondition, tool: Tool, form: RequestForm) -> bool:
    checks = (
        (condition.tool_status, tool.status),
        (condition.tool_category, tool.category),
        (condition.urgency, form.urgency),
        (condition.subject_category, form.subject_category),
    )
    if any(allowed is not None and value not in allowed for allowed, value in checks):
        return False
    return condition.subject_is_child is None or condition.subject_is_child == form.subject_is_child


def choose_route(policy: Policy, tool: Tool, form: RequestForm) -> ChosenRoute:
    for route in policy.routes:
        if _matches(route.when, tool, form):
            return ChosenRoute(route.name, route.stages)
    return ChosenRoute(DEFAULT_ROUTE_NAME, policy.default_route)
