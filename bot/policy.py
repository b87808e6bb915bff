"""The admins' policy file: tool register, review stages, routing rules and time limits.

The policy is the objective criteria the Bridges judgment asked for, so it is validated strictly: an
unknown key, a route naming a stage that does not exist or a malformed Slack ID stops the bot at start-up
with a message naming the file, the key path and the problem.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.timing_policy import DigestSettings, Ratification, Reminders, ReviewDeadlines, WorkingTime

SLACK_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")
SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_USERGROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class PolicyError(Exception):
    """The policy file cannot be used; the message names the file, the key path and the problem."""


class ToolCategory(StrEnum):
    THIRD_PARTY_ONLINE = "third_party_online"
    FORCE_RETROSPECTIVE = "force_retrospective"
    OPERATOR_INITIATED = "operator_initiated"
    LIVE = "live"
    OTHER = "other"


class ToolStatus(StrEnum):
    APPROVED = "approved"
    RESTRICTED = "restricted"
    PROHIBITED = "prohibited"


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    THREAT_TO_LIFE = "threat_to_life"


class SubjectCategory(StrEnum):
    SUSPECT = "suspect"
    VICTIM = "victim"
    WITNESS = "witness"
    MISSING_PERSON = "missing_person"
    UNIDENTIFIED_DECEASED = "unidentified_deceased"
    OTHER = "other"


class Seriousness(StrEnum):
    """Offence seriousness, ordered from least to most serious (see SERIOUSNESS_RANK)."""

    NOT_APPLICABLE = "not_applicable"
    MINOR = "minor"
    MODERATE = "moderate"
    SERIOUS = "serious"


SERIOUSNESS_RANK = {level: rank for rank, level in enumerate(Seriousness)}
# The subjects for whom "no offence" (not_applicable) is a seriousness the form accepts.
NO_OFFENCE_SUBJECTS = (SubjectCategory.MISSING_PERSON, SubjectCategory.UNIDENTIFIED_DECEASED)

CATEGORY_LABELS = {
    ToolCategory.THIRD_PARTY_ONLINE: "Third-party online search engine",
    ToolCategory.FORCE_RETROSPECTIVE: "Force retrospective FR",
    ToolCategory.OPERATOR_INITIATED: "Operator-initiated FR",
    ToolCategory.LIVE: "Live FR",
    ToolCategory.OTHER: "Other",
}
URGENCY_LABELS = {
    Urgency.ROUTINE: "Routine",
    Urgency.URGENT: "Urgent",
    Urgency.THREAT_TO_LIFE: "Threat to life",
}
SUBJECT_LABELS = {
    SubjectCategory.SUSPECT: "Suspect",
    SubjectCategory.VICTIM: "Victim",
    SubjectCategory.WITNESS: "Witness",
    SubjectCategory.MISSING_PERSON: "Missing person",
    SubjectCategory.UNIDENTIFIED_DECEASED: "Unidentified deceased",
    SubjectCategory.OTHER: "Other",
}
SERIOUSNESS_LABELS = {
    Seriousness.SERIOUS: "Serious (indictable only, or serious harm)",
    Seriousness.MODERATE: "Moderate (either-way offence)",
    Seriousness.MINOR: "Minor (summary only)",
    Seriousness.NOT_APPLICABLE: "No offence (e.g. missing person)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    id: Annotated[str, Field(pattern=IDENTIFIER.pattern)]
    label: Annotated[str, Field(min_length=1, max_length=75)]


class Tool(_Strict):
    id: Annotated[str, Field(pattern=IDENTIFIER.pattern)]
    name: Annotated[str, Field(min_length=1, max_length=75)]
    category: ToolCategory
    status: ToolStatus
    jurisdiction: Annotated[str, Field(min_length=1, max_length=200)]
    dpia_reference: Annotated[str | None, Field(max_length=100)] = None
    note: Annotated[str, Field(max_length=1500)] = ""
    # Objective limits on use: below this seriousness the tool may not be used, except for subjects
    # where no offence is involved (missing persons, unidentified deceased).
    min_seriousness: Seriousness | None = None
    seriousness_exempt_subjects: tuple[SubjectCategory, ...] = (
        SubjectCategory.MISSING_PERSON,
        SubjectCategory.UNIDENTIFIED_DECEASED,
    )
    allowed_subjects: tuple[SubjectCategory, ...] | None = None

    def limits_use(self) -> bool:
        """Whether its objective limits refuse some request the form would otherwise accept: a subject
        left out, or a seriousness below the minimum that some subject the tool allows, not exempt from
        it, can be given (the lowest is "no offence" for missing persons and unidentified deceased, minor
        otherwise)."""
        if self.allowed_subjects is not None and set(self.allowed_subjects) != set(SubjectCategory):
            return True
        if self.min_seriousness is None:
            return False
        minimum = SERIOUSNESS_RANK[self.min_seriousness]
        for subject in self.allowed_subjects or tuple(SubjectCategory):
            if subject in self.seriousness_exempt_subjects:
                continue
            lowest = Seriousness.NOT_APPLICABLE if subject in NO_OFFENCE_SUBJECTS else Seriousness.MINOR
            if SERIOUSNESS_RANK[lowest] < minimum:
                return True
        return False


class Stage(_Strict):
    id: Annotated[str, Field(pattern=IDENTIFIER.pattern)]
    name: Annotated[str, Field(min_length=1, max_length=75)]
    channel: str
    approvers: Annotated[tuple[str, ...], Field(min_length=1)]
    required_approvals: Annotated[int, Field(ge=1, le=10)] = 1

    @field_validator("channel")
    @classmethod
    def _channel_id(cls, value: str) -> str:
        if not SLACK_CHANNEL_ID.match(value):
            raise ValueError(
                f"'{value}' is not a Slack channel ID (C… or G…; copy it from the channel details)"
            )
        return value

    @field_validator("approvers")
    @classmethod
    def _approver_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _slack_principals(value)

    @model_validator(mode="after")
    def _enough_approvers(self) -> Stage:
        # Approvals come from distinct people (one decision per person and stage, a deputy's included):
        # a stage of fewer people than it needs could never be approved. A user group's size is Slack's
        # to know, so a stage with one is not checked here.
        people = set(self.approver_users)
        if not self.approver_groups and len(people) < self.required_approvals:
            raise ValueError(
                f"required_approvals is {self.required_approvals} but only {len(people)} distinct "
                "approver(s) are named: the stage could never be approved"
            )
        return self

    @property
    def approver_users(self) -> tuple[str, ...]:
        return tuple(a for a in self.approvers if not a.startswith("S"))

    @property
    def approver_groups(self) -> tuple[str, ...]:
        return tuple(a for a in self.approvers if a.startswith("S"))


class RouteCondition(_Strict):
    """All given attributes must match; an omitted attribute matches anything. A list may not be empty:
    it would match nothing, and silently turn its rule off."""

    tool_status: Annotated[tuple[ToolStatus, ...], Field(min_length=1)] | None = None
    tool_category: Annotated[tuple[ToolCategory, ...], Field(min_length=1)] | None = None
    urgency: Annotated[tuple[Urgency, ...], Field(min_length=1)] | None = None
    subject_category: Annotated[tuple[SubjectCategory, ...], Field(min_length=1)] | None = None
    subject_is_child: bool | None = None

    @property
    def matches_everything(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


class Route(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=75)]
    when: RouteCondition
    stages: Annotated[tuple[str, ...], Field(min_length=1)]


class CaseReferenceRule(_Strict):
    pattern: str = r"^[A-Z0-9][A-Z0-9/\-]{3,29}$"
    example: str = "CRIM/123456/26"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _example_matches(self) -> CaseReferenceRule:
        # The form upper-cases what the officer typed before matching (bot.forms.check_request), so check
        # the example the same way: a pattern that only matches lower case would otherwise load and then
        # refuse every request.
        if not re.fullmatch(self.pattern, self.example.upper()):
            raise ValueError(
                f"the example '{self.example}' does not match the pattern "
                "(references are upper-cased before matching)"
            )
        return self


class ApprovalValidity(_Strict):
    """How long an approval lasts before the search must be requested again, in hours."""

    routine: Annotated[float, Field(gt=0, le=24 * 90)] = 72
    urgent: Annotated[float, Field(gt=0, le=24 * 90)] = 24
    threat_to_life: Annotated[float, Field(gt=0, le=24 * 90)] = 6

    def hours_for(self, urgency: Urgency) -> float:
        return float(getattr(self, urgency.value))


class RetentionDays(_Strict):
    """How long a finished request keeps its free text, in days after its decision, by outcome.

    After that the retention purge (bot/retention.py) redacts the text and keeps the skeleton.
    """

    approved: Annotated[int, Field(ge=1, le=36500)] = 6 * 365
    rejected: Annotated[int, Field(ge=1, le=36500)] = 365
    withdrawn: Annotated[int, Field(ge=1, le=36500)] = 365
    expired: Annotated[int, Field(ge=1, le=36500)] = 365

    def days_for(self, status: str) -> int | None:
        return getattr(self, status, None) if status in type(self).model_fields else None


DEFAULT_PURPOSES = (
    Choice(id="investigation", label="Prevention, investigation or detection of a criminal offence"),
    Choice(id="prosecution", label="Prosecution of a criminal offence"),
    Choice(id="public_security", label="Safeguarding against threats to public security"),
    Choice(id="penalties", label="Execution of a criminal penalty"),
)
DEFAULT_PROVENANCE = (
    Choice(id="cctv", label="CCTV (seized or provided)"),
    Choice(id="bwv", label="Body-worn video"),
    Choice(id="open_source", label="Open source / social media"),
    Choice(id="provided", label="Provided by victim, witness or family"),
    Choice(id="custody", label="Custody image"),
    Choice(id="other", label="Other (explain in the authority field)"),
)


class Policy(_Strict):
    timezone: str = "Europe/London"
    case_reference: CaseReferenceRule = CaseReferenceRule()
    min_justification_length: Annotated[int, Field(ge=0, le=500)] = 40
    purposes: Annotated[tuple[Choice, ...], Field(min_length=1, max_length=100)] = DEFAULT_PURPOSES
    offence_categories: Annotated[tuple[Choice, ...], Field(min_length=1, max_length=100)]
    image_provenance: Annotated[tuple[Choice, ...], Field(min_length=1, max_length=100)] = DEFAULT_PROVENANCE
    tools: Annotated[tuple[Tool, ...], Field(min_length=1, max_length=100)]
    # Categories that are authorised elsewhere (e.g. live FR deployments): the officer is redirected.
    own_process: dict[ToolCategory, Annotated[str, Field(min_length=1, max_length=1500)]] = {}
    stages: Annotated[tuple[Stage, ...], Field(min_length=1)]
    routes: tuple[Route, ...] = ()
    default_route: Annotated[tuple[str, ...], Field(min_length=1)]
    approval_validity_hours: ApprovalValidity = ApprovalValidity()
    leads_channel: str | None = None
    # Leads (user IDs and/or user group IDs) see every request's status and the App Home overview.
    leads: tuple[str, ...] = ()
    retention_days: RetentionDays = RetentionDays()
    # Deadlines, reminders, escalation and the leads' digest (bot/timing_policy.py).
    working_time: WorkingTime = WorkingTime()
    review_deadlines: ReviewDeadlines = ReviewDeadlines()
    reminders: Reminders = Reminders()
    ratification: Ratification = Ratification()
    digest: DigestSettings = DigestSettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder name such as "Europe"
            raise ValueError(f"unknown timezone '{value}' (use an IANA name such as Europe/London)") from None
        return value

    @field_validator("leads")
    @classmethod
    def _lead_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _slack_principals(value)

    @field_validator("leads_channel")
    @classmethod
    def _leads_channel_id(cls, value: str | None) -> str | None:
        if value is not None and not SLACK_CHANNEL_ID.match(value):
            raise ValueError(f"'{value}' is not a Slack channel ID (C… or G…)")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Policy:
        _unique("tools", [t.id for t in self.tools])
        _unique("stages", [s.id for s in self.stages])
        _unique("offence_categories", [c.id for c in self.offence_categories])
        _unique("purposes", [c.id for c in self.purposes])
        _unique("image_provenance", [c.id for c in self.image_provenance])
        known = {s.id for s in self.stages}
        for index, route in enumerate(self.routes):
            _known_stages(f"routes.{index}.stages", route.stages, known)
            if route.when.matches_everything and index < len(self.routes) - 1:
                # The first matching rule wins: the rules after one that matches everything never would.
                raise ValueError(
                    f"routes.{index}.when: matches every request, so the routes after it could never be "
                    "chosen (give it conditions, move it last, or make it the default_route)"
                )
        _known_stages("default_route", self.default_route, known)
        if self.leads_channel is None:
            # Without it an overdue review's escalation, a single-stage approval's ratification reminder
            # and the daily digest would be dropped with a log line: the leads' oversight, gone unseen.
            raise ValueError(
                "leads_channel: required: escalations of overdue reviews, ratification reminders and the "
                "daily digest are posted there"
            )
        return self

    @model_validator(mode="after")
    def _restricted_tools_limited(self) -> Policy:
        # What "restricted" means over "approved": usable only within objective limits, and assessed.
        # Without them the status read as a warning the bot did nothing about (Bridges: criteria, not
        # each officer's discretion). A category authorised through its own process never reaches a
        # request here, so its tools need neither.
        for index, tool in enumerate(self.tools):
            if tool.status is not ToolStatus.RESTRICTED or tool.category in self.own_process:
                continue
            missing = []
            if not tool.limits_use():  # a limit that rules nothing out is none
                missing.append(
                    "an objective limit that refuses some request (a min_seriousness above the lowest "
                    "seriousness of a subject it is not exempt for, or allowed_subjects leaving one out)"
                )
            if not (tool.dpia_reference or "").strip():
                missing.append("a dpia_reference")
            if missing:
                raise ValueError(
                    f"tools.{index} ('{tool.id}'): a restricted tool needs {' and '.join(missing)}; "
                    "otherwise make it approved or prohibited"
                )
        return self

    @model_validator(mode="after")
    def _deadline_stages_known(self) -> Policy:
        known = {s.id for s in self.stages}
        for stage_id in self.review_deadlines.stages:
            if stage_id not in known:
                defined = ", ".join(sorted(known))
                raise ValueError(f"review_deadlines.stages: unknown stage '{stage_id}' (defined: {defined})")
        return self

    # Look-ups used by the workflow and the views.
    def tool(self, tool_id: str) -> Tool | None:
        return next((t for t in self.tools if t.id == tool_id), None)

    def stage(self, stage_id: str) -> Stage:
        return next(s for s in self.stages if s.id == stage_id)

    def label(self, choices: tuple[Choice, ...], choice_id: str) -> str:
        return next((c.label for c in choices if c.id == choice_id), choice_id)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _slack_principals(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        if not (SLACK_USER_ID.match(item) or SLACK_USERGROUP_ID.match(item)):
            raise ValueError(f"'{item}' is neither a Slack user ID (U…/W…) nor a user group ID (S…)")
    return value


def _unique(where: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"{where}: id '{item}' is used twice")
        seen.add(item)


def _known_stages(where: str, stage_ids: tuple[str, ...], known: set[str]) -> None:
    for position, stage_id in enumerate(stage_ids):
        if stage_id not in known:
            raise ValueError(
                f"{where}.{position}: unknown stage '{stage_id}' (defined: {', '.join(sorted(known))})"
            )
    if len(set(stage_ids)) != len(stage_ids):
        raise ValueError(f"{where}: a stage is listed twice")


class LoadedPolicy(BaseModel):
    """A validated policy with the version (hash of the file) that decisions record."""

    model_config = ConfigDict(frozen=True)

    policy: Policy
    version: str
    path: str


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's default keeps the last of two equal keys; in a policy that silently drops a rule, so refuse."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_policy(text: str, source: str = "<policy>") -> LoadedPolicy:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{source}:{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a YAML mapping of keys to values")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_describe(source, exc)) from None
    version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return LoadedPolicy(policy=policy, version=version, path=source)


def load_policy(path: Path | str) -> LoadedPolicy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(
            f"{path}: policy file not found (copy policy.example.yml and set FRBOT_POLICY_FILE)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc}") from None
    return parse_policy(text, str(path))


def _describe(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against policy.example.yml)"
        if error["loc"]:
            key_path = ".".join(str(part) for part in error["loc"])
            lines.append(f"{source}: {key_path}: {message}")
        else:
            # Whole-policy checks (Policy._cross_references) start their message with the key path
            # themselves, e.g. "default_route.0: unknown stage 'x'"; a "(top level)" prefix would misplace it.
            lines.append(f"{source}: {message}")
    return "\n".join(lines)
