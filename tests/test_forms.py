"""The request form's objective checks, the reviewer forms, and parsing Slack's view.state."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from bot import forms
from bot.forms import (
    ERROR_LIMIT,
    FIELD_ORDER,
    TEXT_FIELDS,
    DecisionForm,
    FormErrors,
    RequestForm,
    check_decision,
    check_question,
    check_request,
    read_state,
)
from bot.policy import LoadedPolicy, Seriousness, SubjectCategory, Urgency
from tests.conftest import slack_state, valid_form_values

JUSTIFICATION_FIELDS = [f.block_id for f in TEXT_FIELDS if f.justification]
LONG_ENOUGH = "A reasoned answer that is specific to this one case."


def errors_for(policy: LoadedPolicy, **overrides: str) -> dict[str, str]:
    with pytest.raises(FormErrors) as caught:
        check_request(policy.policy, valid_form_values(**overrides))
    return caught.value.errors


# --- A valid form --------------------------------------------------------------------------------


def test_valid_form_passes_and_normalises(policy: LoadedPolicy) -> None:
    form = check_request(
        policy.policy,
        valid_form_values(
            case_reference="  crim/123456/26\u200b ",
            necessity="House-to-house\u0000 and CCTV\u202e trawl have not\x1b identified the suspect."
            "\n2nd line",
            subject_is_child="yes",
        ),
    )
    assert isinstance(form, RequestForm)
    assert form.case_reference == "CRIM/123456/26"  # stripped, upper-cased
    # NUL, ESC, right-to-left override and zero-width space are gone; the officer's line break stays.
    assert form.necessity == "House-to-house and CCTV trawl have not identified the suspect.\n2nd line"
    assert form.subject_is_child is True
    assert isinstance(form.subject_is_child, bool)
    assert form.offence_seriousness is Seriousness.SERIOUS
    assert form.subject_category is SubjectCategory.SUSPECT
    assert form.urgency is Urgency.ROUTINE
    assert form.urgency_justification == ""


def test_subject_is_child_no_is_false(form: RequestForm) -> None:
    assert form.subject_is_child is False


def test_valid_form_read_from_slack_state(policy: LoadedPolicy) -> None:
    raw = read_state(slack_state(valid_form_values()))
    assert raw["tool"] == "force-rfr"
    assert raw["subject_is_child"] == "no"
    assert "urgency_justification" not in raw  # Slack sends null for an empty optional input
    assert check_request(policy.policy, raw).case_reference == "CRIM/123456/26"


def test_initial_values_round_trip(policy: LoadedPolicy, form: RequestForm) -> None:
    """What a pre-filled modal shows parses back to the same request."""
    assert check_request(policy.policy, form.initial_values()) == form


def test_urgent_request_with_justification_passes(policy: LoadedPolicy) -> None:
    form = check_request(
        policy.policy,
        valid_form_values(urgency="urgent", urgency_justification="Suspect is due to leave the country."),
    )
    assert form.urgency is Urgency.URGENT
    assert form.urgency_justification == "Suspect is due to leave the country."


def test_min_seriousness_tool_allowed_at_that_seriousness(policy: LoadedPolicy) -> None:
    form = check_request(policy.policy, valid_form_values(tool="engine-a", offence_seriousness="serious"))
    assert form.tool == "engine-a"


@pytest.mark.parametrize("subject", ["missing_person", "unidentified_deceased"])
def test_min_seriousness_exempt_subjects(policy: LoadedPolicy, subject: str) -> None:
    for seriousness in ("not_applicable", "minor"):
        form = check_request(
            policy.policy,
            valid_form_values(
                tool="engine-a",
                subject_category=subject,
                offence_seriousness=seriousness,
                offence_category="missing",
            ),
        )
        assert form.offence_seriousness == seriousness


def test_text_exactly_at_max_length_passes(policy: LoadedPolicy) -> None:
    values = valid_form_values(urgency="urgent")
    for field in TEXT_FIELDS:
        if field is not forms.CASE_REFERENCE:
            words = f"{field.block_id} alpha beta gamma delta "  # a different answer in each box
            values[field.block_id] = (words + "x" * field.max_length)[: field.max_length]
    form = check_request(policy.policy, values)
    assert len(form.necessity) == forms.NECESSITY.max_length


# --- One invalid input, one error on the right block -------------------------------------------


@pytest.mark.parametrize("field", [f for f in FIELD_ORDER if not getattr(f, "optional", False)])
def test_missing_required_field(policy: LoadedPolicy, field: forms.TextField | forms.SelectField) -> None:
    values = valid_form_values()
    del values[field.block_id]
    with pytest.raises(FormErrors) as caught:
        check_request(policy.policy, values)
    assert list(caught.value.errors) == [field.block_id]
    expected = "Choose one of the options." if isinstance(field, forms.SelectField) else "This is required."
    assert caught.value.errors[field.block_id] == expected


@pytest.mark.parametrize("field", [f.block_id for f in TEXT_FIELDS if not f.optional])
def test_whitespace_and_control_characters_only_count_as_missing(policy: LoadedPolicy, field: str) -> None:
    errors = errors_for(policy, **{field: " \n\t\u200b\u0007 "})
    assert errors == {field: "This is required."}


@pytest.mark.parametrize(
    "reference",
    [
        "CRIM-123456-26",  # wrong separator
        "CRIM/123/26",  # too few digits
        "CRIM/123456/2026",  # year too long
        "CRIM/123456/26/1",
        "<!channel>",
        "CRIM/123456/26\nX",
        "CRIM/１２３４５６/26",  # full-width digits are not [0-9]
    ],
)
def test_bad_case_reference(policy: LoadedPolicy, reference: str) -> None:
    errors = errors_for(policy, case_reference=reference)
    assert list(errors) == ["case_reference"]
    assert "CRIM/123456/26" in errors["case_reference"]  # the policy's example is shown


def test_case_reference_over_max_length(policy: LoadedPolicy) -> None:
    errors = errors_for(policy, case_reference="A" * (forms.CASE_REFERENCE.max_length + 1))
    assert list(errors) == ["case_reference"]
    assert str(forms.CASE_REFERENCE.max_length) in errors["case_reference"]


@pytest.mark.parametrize("field", JUSTIFICATION_FIELDS)
def test_justification_shorter_than_policy_minimum(policy: LoadedPolicy, field: str) -> None:
    minimum = policy.policy.min_justification_length
    errors = errors_for(policy, **{field: "n/a"})
    assert list(errors) == [field]
    assert f"at least {minimum} characters" in errors[field]
    # Exactly the minimum passes; one short fails (surrounding space does not count).
    exact = "abc def ghi jkl mnop" + "q" * (minimum - 20)
    assert len(exact) == minimum
    check_request(policy.policy, valid_form_values(**{field: exact}))
    assert list(errors_for(policy, **{field: "  " + exact[:-1] + "  "})) == [field]


@pytest.mark.parametrize("field", JUSTIFICATION_FIELDS)
@pytest.mark.parametrize(
    "filler",
    [
        "x" * 60,  # one "word"
        "n/a " * 12,  # no word of two letters
        "n/a" + "\n" * 30 + "done",  # blank lines making up the length
        "none none none none none none none",  # one word, repeated
    ],
)
def test_filler_does_not_pass_for_a_justification(policy: LoadedPolicy, field: str, filler: str) -> None:
    """Bridges: the criteria must be objective. Each of these reached the minimum length and was taken."""
    assert list(errors_for(policy, **{field: filler})) == [field]


def test_one_answer_pasted_into_every_box_is_refused_in_all_but_the_first(policy: LoadedPolicy) -> None:
    pasted = "Serious offence; the image is the only lead we have at present."
    fields = [f for f in JUSTIFICATION_FIELDS if f != "urgency_justification"]
    errors = errors_for(policy, **{f: pasted for f in fields})
    assert list(errors) == fields[1:]
    first_label = next(f.label for f in TEXT_FIELDS if f.block_id == fields[0])
    assert all(f"repeats your answer to '{first_label}'" in errors[f] for f in fields[1:])
    # Differing only in case and spacing is still the same answer.
    shouted = "  " + pasted.upper().replace(" ", "   ")
    assert list(errors_for(policy, **{fields[0]: pasted, fields[1]: shouted})) == [fields[1]]


def test_image_authority_is_not_held_to_the_justification_minimum(policy: LoadedPolicy) -> None:
    assert not forms.IMAGE_AUTHORITY.justification
    form = check_request(policy.policy, valid_form_values(image_authority="Exh JS/1"))
    assert form.image_authority == "Exh JS/1"


@pytest.mark.parametrize("field", [f for f in TEXT_FIELDS if f is not forms.CASE_REFERENCE])
def test_text_over_max_length(policy: LoadedPolicy, field: forms.TextField) -> None:
    overrides = {field.block_id: "y" * (field.max_length + 1)}
    if field is forms.URGENCY_JUSTIFICATION:
        overrides["urgency"] = "urgent"
    errors = errors_for(policy, **overrides)
    assert list(errors) == [field.block_id]
    assert (
        errors[field.block_id] == f"Keep this to {field.max_length} characters (now {field.max_length + 1})."
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tool", "clearview"),
        ("tool", "Force RFR"),  # the label, not the value
        ("purpose", "curiosity"),
        ("offence_category", "parking"),
        ("offence_seriousness", "trivial"),
        ("offence_seriousness", "SERIOUS"),
        ("subject_category", "celebrity"),
        ("subject_is_child", "maybe"),
        ("subject_is_child", "true"),
        ("image_source", "dashcam"),
        ("urgency", "yesterday"),
        ("urgency", ""),
    ],
)
def test_forged_or_unknown_select_value(policy: LoadedPolicy, field: str, value: str) -> None:
    assert errors_for(policy, **{field: value}) == {field: "Choose one of the options."}


def test_prohibited_tool_is_refused_with_the_register_note(policy: LoadedPolicy) -> None:
    errors = errors_for(policy, tool="engine-b")
    assert list(errors) == ["tool"]
    assert "Engine B is prohibited" in errors["tool"]
    assert "High, if not insurmountable, bar to lawful use." in errors["tool"]


def test_live_tool_is_redirected_to_its_own_process(policy: LoadedPolicy) -> None:
    errors = errors_for(policy, tool="lfr")
    assert errors == {"tool": policy.policy.own_process["live"]}
    assert "LFR procedure" in errors["tool"]


@pytest.mark.parametrize("seriousness", ["moderate", "minor"])
def test_tool_below_its_min_seriousness(policy: LoadedPolicy, seriousness: str) -> None:
    errors = errors_for(policy, tool="engine-a", offence_seriousness=seriousness)
    assert list(errors) == ["offence_seriousness"]
    assert "Engine A" in errors["offence_seriousness"]
    assert "serious" in errors["offence_seriousness"]


@pytest.mark.parametrize("subject", ["suspect", "victim", "witness", "other"])
def test_not_applicable_seriousness_needs_a_no_offence_subject(policy: LoadedPolicy, subject: str) -> None:
    errors = errors_for(policy, subject_category=subject, offence_seriousness="not_applicable")
    assert list(errors) == ["offence_seriousness"]
    assert "missing persons" in errors["offence_seriousness"]


@pytest.mark.parametrize("urgency", ["urgent", "threat_to_life"])
@pytest.mark.parametrize("justification", ["", "   ", "soon", "x" * 19])
def test_urgent_needs_urgency_justification(policy: LoadedPolicy, urgency: str, justification: str) -> None:
    errors = errors_for(policy, urgency=urgency, urgency_justification=justification)
    assert list(errors) == ["urgency_justification"]
    assert "cannot wait" in errors["urgency_justification"]


def test_routine_request_ignores_urgency_justification(policy: LoadedPolicy) -> None:
    form = check_request(policy.policy, valid_form_values(urgency="routine", urgency_justification="short"))
    assert form.urgency_justification == "short"


# --- Several errors, and the error texts -------------------------------------------------------


def test_several_errors_are_all_reported(policy: LoadedPolicy) -> None:
    errors = errors_for(
        policy,
        tool="engine-b",
        case_reference="nope",
        purpose="",
        necessity="n/a",
        alternatives="z" * 2001,
        subject_is_child="perhaps",
        subject_category="suspect",
        offence_seriousness="not_applicable",
        urgency="threat_to_life",
        urgency_justification="",
    )
    assert set(errors) == {
        "tool",
        "case_reference",
        "purpose",
        "necessity",
        "alternatives",
        "subject_is_child",
        "offence_seriousness",
        "urgency_justification",
    }


def test_error_texts_fit_under_the_field(policy: LoadedPolicy) -> None:
    """A long register note or own-process text is clipped to ERROR_LIMIT, marked with an ellipsis."""
    long_note = "Never. " * 200
    text = (
        "offence_categories: [{id: violence, label: Violence}]\n"
        "tools:\n"
        "  - {id: bad, name: Bad engine, category: other, status: prohibited, jurisdiction: X, note: "
        f"'{long_note.strip()}'}}\n"
        "stages: [{id: s, name: S, channel: C0S, approvers: [U0A]}]\n"
        "default_route: [s]\n"
        "leads_channel: C0LEADS\n"
    )
    from bot.policy import parse_policy

    long_policy = parse_policy(text, "long.yml").policy
    with pytest.raises(FormErrors) as caught:
        check_request(long_policy, valid_form_values(tool="bad", offence_category="violence"))
    message = caught.value.errors["tool"]
    assert len(message) == ERROR_LIMIT
    assert message.endswith("…")
    assert message.startswith("Bad engine is prohibited in this force. Never.")


def test_every_error_text_is_at_most_the_limit(policy: LoadedPolicy) -> None:
    values = {field.block_id: "\x00" for field in FIELD_ORDER}
    values["necessity"] = "q" * 5000
    with pytest.raises(FormErrors) as caught:
        check_request(policy.policy, values)
    assert caught.value.errors
    assert all(0 < len(message) <= ERROR_LIMIT for message in caught.value.errors.values())
    assert set(caught.value.errors) >= {f.block_id for f in FIELD_ORDER if not getattr(f, "optional", False)}


def test_form_errors_clip_direct_messages() -> None:
    error = FormErrors({"a": "x" * 1000, "b": "fine"})
    assert len(error.errors["a"]) == ERROR_LIMIT
    assert error.errors["b"] == "fine"


# --- read_state tolerates whatever arrives ------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        ["tool"],
        "tool",
        42,
        {},
        {"tool": None},
        {"tool": []},
        {"tool": "force-rfr"},
        {"tool": {"value": None}},
        {"tool": {"value": ["force-rfr"]}},
        {"tool": {"value": {"selected_option": "force-rfr"}}},
        {"tool": {"value": {"selected_option": {"value": 7}}}},
        {"tool": {"value": {"selected_option": {"text": "no value"}}}},
        {"tool": {"value": {"selected_option": None, "value": None}}},
        {"case_reference": {"value": {"value": 123}}},
        {"case_reference": {"value": {"value": b"CRIM/1234/26"}}},
        {"case_reference": {"other_action": {"value": "CRIM/1234/26"}}},
        {1: {"value": {"value": "x"}}, None: 3},
    ],
)
def test_read_state_tolerates_malformed_payloads(payload: Any) -> None:
    assert read_state(payload) == {}


def test_read_state_keeps_good_blocks_next_to_bad_ones() -> None:
    state: dict[str, Any] = slack_state(valid_form_values())
    state["purpose"] = None
    state["necessity"] = {"value": {"type": "plain_text_input", "value": 99}}
    state["tool"] = {"value": {"type": "static_select", "selected_option": "force-rfr"}}
    state["unrelated"] = {"value": {"value": "ignored"}}
    raw = read_state(state)
    assert "purpose" not in raw and "necessity" not in raw and "tool" not in raw and "unrelated" not in raw
    assert raw["case_reference"] == "crim/123456/26"
    assert raw["urgency"] == "routine"


def test_read_state_then_check_reports_missing_fields(policy: LoadedPolicy) -> None:
    with pytest.raises(FormErrors) as caught:
        check_request(policy.policy, read_state({"tool": {"value": {"selected_option": {"value": 1}}}}))
    assert "tool" in caught.value.errors
    assert "urgency_justification" not in caught.value.errors  # optional, and urgency is unknown


# --- The reviewer's decision form ---------------------------------------------------------------

RATIONALE = "Necessary and proportionate for this robbery."


def test_approval_with_conditions() -> None:
    form = check_decision(
        {"rationale": f"  {RATIONALE}\x00 ", "conditions": " Delete in 30 days "}, "approve"
    )
    assert form == DecisionForm(rationale=RATIONALE, conditions="Delete in 30 days", reason_code=None)


def test_approval_ignores_a_reason_code() -> None:
    form = check_decision({"rationale": RATIONALE, "reason_code": "not_necessary"}, "approve")
    assert form.reason_code is None


def test_rationale_needs_20_characters() -> None:
    assert forms.MIN_RATIONALE == 20
    check_decision({"rationale": "Need it; no other way"}, "approve")
    for short in ("", "x" * 19, " " * 30, "x" * 19 + "\u200b\u200b", "n/a" + "\n" * 20 + "ok"):
        with pytest.raises(FormErrors) as caught:
            check_decision({"rationale": short}, "approve")
        assert list(caught.value.errors) == ["rationale"]
        assert "20 characters" in caught.value.errors["rationale"]


def test_rationale_of_filler_is_refused() -> None:
    """The decision's reasons, shown to the officer and kept in the audit trail: 'x' * 25 was taken."""
    for filler in ("x" * 25, "n/a " * 8, "ok ok ok ok ok ok ok ok"):
        with pytest.raises(FormErrors) as caught:
            check_decision({"rationale": filler}, "reject")
        assert "not filler" in caught.value.errors["rationale"]


def test_rationale_over_max_length() -> None:
    words = "Necessary and proportionate for this case. "
    check_decision({"rationale": (words * 60)[:2000]}, "approve")
    with pytest.raises(FormErrors) as caught:
        check_decision({"rationale": (words * 60)[:2001]}, "approve")
    assert caught.value.errors == {"rationale": "Keep this to 2000 characters."}


def test_conditions_over_max_length() -> None:
    with pytest.raises(FormErrors) as caught:
        check_decision({"rationale": RATIONALE, "conditions": "c" * 1001}, "approve")
    assert list(caught.value.errors) == ["conditions"]


@pytest.mark.parametrize("reason", [None, "", "because", "Not necessary"])
def test_reject_needs_a_known_reason_code(reason: str | None) -> None:
    raw = {"rationale": RATIONALE}
    if reason is not None:
        raw["reason_code"] = reason
    with pytest.raises(FormErrors) as caught:
        check_decision(raw, "reject")
    assert caught.value.errors == {"reason_code": "Choose a reason."}


def test_reject_ignores_conditions() -> None:
    form = check_decision(
        {"rationale": RATIONALE, "reason_code": "not_proportionate", "conditions": "c" * 5000}, "reject"
    )
    assert form == DecisionForm(rationale=RATIONALE, conditions="", reason_code="not_proportionate")


def test_reject_reports_rationale_and_reason_together() -> None:
    with pytest.raises(FormErrors) as caught:
        check_decision({"rationale": "no"}, "reject")
    assert set(caught.value.errors) == {"rationale", "reason_code"}


def test_decision_form_read_from_slack_state() -> None:
    state = {
        "reason_code": {"value": {"type": "static_select", "selected_option": {"value": "no_lawful_basis"}}},
        "rationale": {"value": {"type": "plain_text_input", "value": RATIONALE}},
    }
    raw = forms.read_fields(state, ("reason_code", "rationale", "conditions"))
    assert check_decision(raw, "reject").reason_code == "no_lawful_basis"


# --- The request-for-information form -----------------------------------------------------------


def test_question_is_cleaned() -> None:
    assert check_question({"question": "  Which exhibit\u202e is the still from?\n "}) == (
        "Which exhibit is the still from?"
    )


@pytest.mark.parametrize("question", ["", "why?", "x" * 9, "\u200b" * 30])
def test_question_too_short(question: str) -> None:
    with pytest.raises(FormErrors) as caught:
        check_question({"question": question})
    assert list(caught.value.errors) == ["question"]
    assert "10 characters" in caught.value.errors["question"]


def test_question_length_limits() -> None:
    assert check_question({"question": "x" * 10}) == "x" * 10
    assert check_question({"question": "x" * 1000}) == "x" * 1000
    with pytest.raises(FormErrors) as caught:
        check_question({"question": "x" * 1001})
    assert caught.value.errors == {"question": "Keep this to 1000 characters."}


def test_question_missing_key() -> None:
    with pytest.raises(FormErrors):
        check_question({})


# --- The officer's answer, the reviewer's comment, the post-use record, delegation ------------------


def test_answer_and_comment_bounds() -> None:
    assert forms.check_answer({"answer": "  Exhibit JS/1\u202e \n"}) == "Exhibit JS/1"
    assert forms.check_comment({"comment": "ok"}) == "ok"
    for check, block_id, limit in (
        (forms.check_answer, "answer", forms.ANSWER.max_length),
        (forms.check_comment, "comment", forms.COMMENT.max_length),
    ):
        assert check({block_id: "y" * limit}) == "y" * limit
        for bad in ("", " x ", "y" * (limit + 1)):
            with pytest.raises(FormErrors) as caught:
                check({block_id: bad})
            assert list(caught.value.errors) == [block_id]


POST_USE = {
    "search_run": "yes",
    "search_result": "no_match",
    "handling": "deleted",
    "handling_authority": "Deleted from the tool on 3 March",
}


def test_post_use_record() -> None:
    form = forms.check_post_use(POST_USE)
    assert (form.search_run, form.result, form.handling, form.notes) == (True, "no_match", "deleted", "")
    not_run = forms.check_post_use({**POST_USE, "search_run": "no", "search_result": "possible_match"})
    assert (not_run.search_run, not_run.result) == (False, "not_run")  # no result when nothing ran


@pytest.mark.parametrize(
    ("overrides", "block_id"),
    [
        ({"search_run": "maybe"}, "search_run"),
        ({"search_result": "a name"}, "search_result"),
        ({"search_result": ""}, "search_result"),
        ({"handling": "shared"}, "handling"),
        ({"handling_authority": "deleted"}, "handling_authority"),  # under 10 characters
        ({"handling_authority": "d" * 501}, "handling_authority"),
        ({"post_use_notes": "n" * 1001}, "post_use_notes"),
    ],
)
def test_post_use_record_errors(overrides: dict[str, str], block_id: str) -> None:
    with pytest.raises(FormErrors) as caught:
        forms.check_post_use({**POST_USE, **overrides})
    assert list(caught.value.errors) == [block_id]


TODAY = date(2026, 3, 2)


def test_delegation() -> None:
    form = forms.check_delegation(
        {"deputy": "UDEPUTY", "starts_on": "2026-03-02", "ends_on": "2026-05-30"}, "UAUTH1", TODAY
    )
    assert (form.deputy_id, form.starts_on, form.ends_on) == ("UDEPUTY", TODAY, date(2026, 5, 30))


@pytest.mark.parametrize(
    ("raw", "block_id"),
    [
        ({"deputy": "UAUTH1"}, "deputy"),  # oneself
        ({"deputy": "C0CHANNEL"}, "deputy"),
        ({"deputy": "<@UDEPUTY>"}, "deputy"),
        ({"deputy": ""}, "deputy"),
        ({"starts_on": "2026-03-01"}, "starts_on"),  # in the past
        ({"starts_on": "tomorrow"}, "starts_on"),
        ({"ends_on": ""}, "ends_on"),
        ({"ends_on": "2026-03-01", "starts_on": "2026-03-02"}, "ends_on"),
        ({"ends_on": "2026-05-31"}, "ends_on"),  # 91 days
    ],
)
def test_delegation_errors(raw: dict[str, str], block_id: str) -> None:
    values = {"deputy": "UDEPUTY", "starts_on": "2026-03-02", "ends_on": "2026-03-09", **raw}
    with pytest.raises(FormErrors) as caught:
        forms.check_delegation(values, "UAUTH1", TODAY)
    assert list(caught.value.errors) == [block_id]


def test_read_fields_reads_user_and_date_pickers() -> None:
    state = {
        "deputy": {"value": {"type": "users_select", "selected_user": "UDEPUTY"}},
        "starts_on": {"value": {"type": "datepicker", "selected_date": "2026-03-02"}},
        "ends_on": {"value": {"type": "datepicker", "selected_date": None}},
    }
    assert forms.read_fields(state, ("deputy", "starts_on", "ends_on")) == {
        "deputy": "UDEPUTY",
        "starts_on": "2026-03-02",
    }
