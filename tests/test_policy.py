"""Loading the admins' policy file: every mistake stops start-up with the file, key path and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.policy import (
    LoadedPolicy,
    PolicyError,
    SubjectCategory,
    ToolCategory,
    ToolStatus,
    Urgency,
    load_policy,
    parse_policy,
)
from tests.conftest import TEST_POLICY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policy.example.yml"
SOURCE = "force-policy.yml"


def broken(old: str, new: str) -> str:
    """The test policy with one edit, failing loudly if the edit does not apply."""
    assert old in TEST_POLICY, old
    return TEST_POLICY.replace(old, new, 1)


def policy_error(text: str, source: str = SOURCE) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source)
    return str(caught.value)


# --- Good policies --------------------------------------------------------------------------------


def test_example_policy_loads() -> None:
    loaded = load_policy(EXAMPLE)
    policy = loaded.policy
    assert loaded.path == str(EXAMPLE)
    assert len(loaded.version) == 16
    assert [s.id for s in policy.stages] == ["supervisor", "authorising_officer", "data_protection"]
    assert policy.default_route == ("supervisor", "authorising_officer")
    assert policy.min_justification_length == 40
    assert ToolCategory.LIVE in policy.own_process
    engine_b = policy.tool("online-engine-b")
    assert engine_b is not None and engine_b.status is ToolStatus.PROHIBITED
    assert policy.tool("online-engine-a").min_seriousness == "serious"  # type: ignore[union-attr]
    assert policy.leads_channel == "C0FRLEADS"
    assert policy.approval_validity_hours.hours_for(Urgency.THREAT_TO_LIFE) == 6
    # The example's own example reference passes its own pattern, as the form checks it.
    import re

    assert re.fullmatch(policy.case_reference.pattern, policy.case_reference.example.upper())


def test_example_policy_loads_from_a_str_path() -> None:
    assert load_policy(str(EXAMPLE)).version == load_policy(EXAMPLE).version


def test_test_policy_look_ups(policy: LoadedPolicy) -> None:
    p = policy.policy
    assert p.tool("nope") is None
    assert p.stage("authoriser").required_approvals == 2
    assert p.stage("supervisor").approver_users == ("USUP1", "USUP2")
    assert p.stage("supervisor").approver_groups == ("S0SUPERS",)
    assert p.label(p.offence_categories, "violence") == "Violence against the person"
    assert p.label(p.offence_categories, "unknown-id") == "unknown-id"
    assert str(p.zone) == "Europe/London"
    assert p.tool("engine-a").seriousness_exempt_subjects == (  # type: ignore[union-attr]
        SubjectCategory.MISSING_PERSON,
        SubjectCategory.UNIDENTIFIED_DECEASED,
    )


def test_defaults_fill_in_a_minimal_policy() -> None:
    loaded = parse_policy(
        "offence_categories: [{id: other, label: Other}]\n"
        "tools: [{id: t, name: T, category: other, status: approved, jurisdiction: UK}]\n"
        "stages: [{id: s, name: S, channel: G0PRIVATE, approvers: [W0ENTERPRISE]}]\n"
        "default_route: [s]\n"
        "leads_channel: C0LEADS\n",
        SOURCE,
    )
    policy = loaded.policy
    assert policy.timezone == "Europe/London"
    assert policy.routes == ()
    assert policy.purposes[0].id == "investigation"
    assert policy.case_reference.example == "CRIM/123456/26"
    assert policy.digest.enabled and policy.ratification.required_for


def test_a_policy_must_say_where_the_leads_are_told() -> None:
    """Escalations, ratification reminders and the digest were dropped with a log line without it."""
    with pytest.raises(PolicyError, match=r"leads_channel: required"):
        parse_policy(TEST_POLICY.replace("leads_channel: C0LEADS\n", ""), SOURCE)


def test_a_stage_needing_more_approvals_than_its_approvers_is_refused() -> None:
    """Approvals come from distinct people: one approver cannot give a stage its two approvals."""
    one = TEST_POLICY.replace("approvers: [UDPO1]}", "approvers: [UDPO1, UDPO1], required_approvals: 2}")
    with pytest.raises(PolicyError, match=r"stages\.2.*only 1 distinct approver"):
        parse_policy(one, SOURCE)
    # With a user group the count is Slack's: not refused here.
    parse_policy(
        TEST_POLICY.replace(
            "approvers: [USUP1, USUP2, S0SUPERS]}", "approvers: [S0SUPERS], required_approvals: 3}"
        ),
        SOURCE,
    )


@pytest.mark.parametrize(
    ("old", "new", "missing"),
    [
        ("    min_seriousness: serious\n", "", "an objective limit that refuses some request"),
        # Limits that rule nothing out are none.
        ("    min_seriousness: serious\n", "    min_seriousness: not_applicable\n", "an objective limit"),
        # "No offence" is only for the subjects exempt from the minimum by default: minor refuses nothing.
        ("    min_seriousness: serious\n", "    min_seriousness: minor\n", "an objective limit"),
        (
            "    min_seriousness: serious\n",
            "    allowed_subjects: [suspect, victim, witness, missing_person, unidentified_deceased, other]"
            "\n",
            "an objective limit",
        ),
        ("    dpia_reference: DPIA-1\n", "", "a dpia_reference"),
        ("    dpia_reference: DPIA-1\n", "    dpia_reference: '  '\n", "a dpia_reference"),
    ],
)
def test_a_restricted_tool_needs_limits_and_an_assessment(old: str, new: str, missing: str) -> None:
    """ "restricted" had no effect of its own: a restricted tool with no limits was requested and routed as
    an approved one. It now means usable only within objective limits, with a DPIA."""
    with pytest.raises(PolicyError, match=rf"tools\.1 \('engine-a'\): a restricted tool needs {missing}"):
        parse_policy(TEST_POLICY.replace(old, new, 1), SOURCE)


def test_a_seriousness_limit_counts_where_it_can_refuse_a_request() -> None:
    """minor refuses "no offence", which only exempt subjects can give, unless they are not exempt."""
    not_exempt = TEST_POLICY.replace(
        "    min_seriousness: serious\n",
        "    min_seriousness: minor\n    seriousness_exempt_subjects: [unidentified_deceased]\n",
        1,
    )
    assert parse_policy(not_exempt, SOURCE).policy.tool("engine-a") is not None


def test_allowed_subjects_is_a_restricted_tools_limit_too() -> None:
    limited = TEST_POLICY.replace(
        "    min_seriousness: serious\n", "    allowed_subjects: [missing_person]\n", 1
    )
    assert parse_policy(limited, SOURCE).policy.tool("engine-a") is not None
    # The test policy's restricted live tool has neither: its category goes through its own process.
    assert "{id: lfr, name: Live FR, category: live, status: restricted, jurisdiction: UK}" in TEST_POLICY


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("when: {urgency: [threat_to_life]}", "when: {urgency: []}", r"routes\.1\.when\.urgency"),
        (
            "when: {tool_category: [third_party_online]}",
            "when: {}",
            r"routes\.0\.when: matches every request",
        ),
    ],
)
def test_a_route_that_could_never_match_or_hides_the_rest_is_refused(old: str, new: str, where: str) -> None:
    with pytest.raises(PolicyError, match=where):
        parse_policy(TEST_POLICY.replace(old, new), SOURCE)
    # The last route may match everything: nothing comes after it but the default.
    parse_policy(TEST_POLICY.replace("when: {urgency: [threat_to_life]}", "when: {}"), SOURCE)


# --- Versions ------------------------------------------------------------------------------------


def test_version_is_stable_for_the_same_text() -> None:
    assert parse_policy(TEST_POLICY).version == parse_policy(TEST_POLICY, "elsewhere.yml").version


@pytest.mark.parametrize(
    "edited",
    [
        TEST_POLICY.replace("min_justification_length: 20", "min_justification_length: 25"),
        TEST_POLICY + "# a comment changes the file, so the version\n",
        TEST_POLICY.replace("routine: 72", "routine: 48"),
    ],
)
def test_version_changes_when_the_text_changes(edited: str) -> None:
    assert edited != TEST_POLICY
    assert parse_policy(edited).version != parse_policy(TEST_POLICY).version


def test_loaded_file_version_matches_its_text(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(TEST_POLICY, encoding="utf-8")
    first = load_policy(path)
    assert first.version == parse_policy(TEST_POLICY).version
    path.write_text(TEST_POLICY.replace("72", "96"), encoding="utf-8")
    assert load_policy(path).version != first.version


# --- Errors name the file, the key path and the problem ---------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key_path"),
    [
        ("min_justification_length: 20", "min_justificaton_length: 20", "min_justificaton_length"),
        ("  example: CRIM/123456/26", "  example: CRIM/123456/26\n  flags: i", "case_reference.flags"),
        ("channel: C0DPO,", "chanel: C0DPO,", "stages.2.chanel"),
        ("when: {urgency: [threat_to_life]}", "when: {urgncy: [threat_to_life]}", "routes.1.when.urgncy"),
        (
            "approval_validity_hours: {routine: 72,",
            "approval_validity_hours: {routne: 72,",
            "approval_validity_hours.routne",
        ),
    ],
)
def test_unknown_key(old: str, new: str, key_path: str) -> None:
    lines = policy_error(broken(old, new)).splitlines()
    assert f"{SOURCE}: {key_path}: unknown key (check the spelling against policy.example.yml)" in lines


def test_route_naming_an_unknown_stage() -> None:
    message = policy_error(broken("stages: [authoriser]", "stages: [authoriser, legal]"))
    assert message == (
        f"{SOURCE}: routes.1.stages.1: unknown stage 'legal' (defined: authoriser, dpo, supervisor)"
    )


def test_default_route_naming_an_unknown_stage() -> None:
    message = policy_error(broken("default_route: [supervisor]", "default_route: [supervisr]"))
    assert message.startswith(f"{SOURCE}: default_route.0: unknown stage 'supervisr'")
    assert "(top level)" not in message


def test_route_listing_a_stage_twice() -> None:
    message = policy_error(broken("stages: [authoriser]", "stages: [authoriser, authoriser]"))
    assert message == f"{SOURCE}: routes.1.stages: a stage is listed twice"


def test_missing_default_route() -> None:
    message = policy_error(broken("default_route: [supervisor]\n", ""))
    assert message == f"{SOURCE}: default_route: Field required"


def test_empty_default_route() -> None:
    message = policy_error(broken("default_route: [supervisor]", "default_route: []"))
    assert message.startswith(f"{SOURCE}: default_route: ")
    assert "at least 1 item" in message


@pytest.mark.parametrize("channel", ["general", "c0super", "D0DIRECT", "C", "'#fr-review'", "U0USER"])
def test_malformed_channel_id(channel: str) -> None:
    message = policy_error(broken("channel: C0SUPER", f"channel: {channel}"))
    shown = channel.strip("'")
    assert message == (
        f"{SOURCE}: stages.0.channel: '{shown}' is not a Slack channel ID "
        "(C… or G…; copy it from the channel details)"
    )


def test_malformed_leads_channel() -> None:
    message = policy_error(broken("leads_channel: C0LEADS", "leads_channel: fr-leads"))
    assert message == f"{SOURCE}: leads_channel: 'fr-leads' is not a Slack channel ID (C… or G…)"


@pytest.mark.parametrize("approver", ["jane.smith", "usup1", "@USUP1", "C0CHANNEL", "U"])
def test_malformed_approver_id(approver: str) -> None:
    message = policy_error(broken("approvers: [UDPO1]", f"approvers: [UDPO1, '{approver}']"))
    assert message == (
        f"{SOURCE}: stages.2.approvers: '{approver}' is neither a Slack user ID (U…/W…) "
        "nor a user group ID (S…)"
    )


def test_malformed_lead_id() -> None:
    message = policy_error(broken("leads: [ULEAD1]", "leads: [ULEAD1, lead.person]"))
    assert message == (
        f"{SOURCE}: leads: 'lead.person' is neither a Slack user ID (U…/W…) nor a user group ID (S…)"
    )


def test_stage_without_approvers() -> None:
    message = policy_error(broken("approvers: [UDPO1]", "approvers: []"))
    assert message.startswith(f"{SOURCE}: stages.2.approvers: ")


@pytest.mark.parametrize("zone", ["Europe/Londn", "BST", "Europe", "../../etc/passwd", "''"])
def test_bad_timezone(zone: str) -> None:
    message = policy_error(broken("timezone: Europe/London", f"timezone: {zone}"))
    assert message == (
        f"{SOURCE}: timezone: unknown timezone '{zone.strip(chr(39))}' "
        "(use an IANA name such as Europe/London)"
    )


def test_invalid_regex() -> None:
    message = policy_error(broken("'^[A-Z0-9]{2,6}/[0-9]{4,8}/[0-9]{2}$'", "'^[A-Z0-9{2,6}/(['"))
    assert message.startswith(f"{SOURCE}: case_reference.pattern: not a valid regular expression: ")


def test_example_not_matching_the_case_pattern() -> None:
    message = policy_error(broken("example: CRIM/123456/26", "example: CRIM-123456-26"))
    assert message.startswith(
        f"{SOURCE}: case_reference: the example 'CRIM-123456-26' does not match the pattern"
    )


def test_lower_case_example_is_checked_as_the_form_checks_it() -> None:
    """The form upper-cases the reference before matching, so a lower-case example is fine..."""
    loaded = parse_policy(broken("example: CRIM/123456/26", "example: crim/123456/26"), SOURCE)
    assert loaded.policy.case_reference.example == "crim/123456/26"


def test_pattern_that_can_never_match_an_upper_cased_reference_is_refused() -> None:
    """...and a lower-case-only pattern, which would refuse every request, stops start-up."""
    text = broken("'^[A-Z0-9]{2,6}/[0-9]{4,8}/[0-9]{2}$'", "'^[a-z]{2,6}/[0-9]{4,8}/[0-9]{2}$'")
    message = policy_error(text.replace("example: CRIM/123456/26", "example: crim/123456/26"))
    assert message.startswith(f"{SOURCE}: case_reference: the example 'crim/123456/26' does not match")
    assert "upper-cased" in message


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("id: engine-a", "id: force-rfr", "tools: id 'force-rfr' is used twice"),
        (
            "{id: dpo, name: Data protection",
            "{id: supervisor, name: Data protection",
            "stages: id 'supervisor' is used twice",
        ),
        (
            "{id: missing, label: Missing person}",
            "{id: violence, label: Missing person}",
            "offence_categories: id 'violence' is used twice",
        ),
    ],
)
def test_duplicate_ids(old: str, new: str, where: str) -> None:
    assert policy_error(broken(old, new)) == f"{SOURCE}: {where}"


@pytest.mark.parametrize(
    ("old", "new", "key_path", "problem"),
    [
        ("category: live", "category: webcam", "tools.3.category", "Input should be"),
        ("status: prohibited", "status: banned", "tools.2.status", "Input should be"),
        ("required_approvals: 2", "required_approvals: 0", "stages.1.required_approvals", "greater than"),
        ("routine: 72", "routine: -1", "approval_validity_hours.routine", "greater than"),
        (
            "min_justification_length: 20",
            "min_justification_length: 5000",
            "min_justification_length",
            "less than",
        ),
        ("{id: lfr,", "{id: 'Live FR',", "tools.3.id", "String should match pattern"),
        ("  live: Live FR", "  lives: Live FR", "own_process.lives.[key]", "Input should be"),
    ],
)
def test_bad_values(old: str, new: str, key_path: str, problem: str) -> None:
    message = policy_error(broken(old, new))
    assert message.startswith(f"{SOURCE}: {key_path}: ")
    assert problem in message


def test_every_problem_is_reported_one_per_line() -> None:
    text = broken("channel: C0SUPER", "channel: general")
    text = text.replace("timezone: Europe/London", "timezone: Nowhere/City")
    text = text.replace("min_justification_length: 20", "min_justification_lenght: 20")
    lines = policy_error(text).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{SOURCE}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {
        "timezone",
        "min_justification_lenght",
        "stages.0.channel",
    }


def test_invalid_yaml_names_the_line() -> None:
    text = broken("routes:\n", "routes:\n  - name: [unclosed\n")
    line = TEST_POLICY[: TEST_POLICY.index("routes:\n")].count("\n") + 2  # 1-based, the line after routes:
    message = policy_error(text)
    assert message.startswith(f"{SOURCE}: line ")
    assert "not valid YAML" in message
    reported = int(message.split("line ", 1)[1].split(",", 1)[0])
    assert line <= reported <= line + 1  # PyYAML reports where it noticed, at most one line on


def test_invalid_yaml_tab_indentation() -> None:
    message = policy_error("timezone: Europe/London\nstages:\n\t- id: x\n")
    assert message.startswith(f"{SOURCE}: line 3, column 1: not valid YAML: ")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a list\n- of things\n", "just a string\n"])
def test_policy_must_be_a_mapping(text: str) -> None:
    assert policy_error(text) == f"{SOURCE}: the policy must be a YAML mapping of keys to values"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "policy.yml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: policy file not found")
    assert "FRBOT_POLICY_FILE" in message


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_bytes(b"timezone: \xff\xfe Europe/London\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: cannot read the policy file: ")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)  # a folder
    assert str(caught.value).startswith(f"{tmp_path}: cannot read the policy file: ")


def test_loaded_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(broken("channel: C0SUPER", "channel: general"), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: stages.0.channel: 'general'")


def test_a_key_given_twice_is_refused_with_its_line() -> None:
    from bot.policy import PolicyError, parse_policy

    text = "timezone: Europe/London\ntimezone: Europe/Paris\n"
    with pytest.raises(PolicyError) as refused:
        parse_policy(text, "dup.yml")
    assert "dup.yml: line 2" in str(refused.value)
    assert "'timezone' appears twice" in str(refused.value)
