"""`fr-bot audit|retention|report` as an operator runs them: real subprocesses against a real database."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from bot.audit import append_event, event_hash
from bot.forms import DecisionForm, check_request
from bot.workflow import Workflow
from storage.db import transaction
from storage.models import AuditEvent
from tests.conftest import TEST_POLICY, valid_form_values
from tests.test_audit_chain import attacker

ROOT = Path(__file__).resolve().parents[1]
REJECT = DecisionForm(
    rationale="Alternatives are not exhausted: ask the family.", reason_code="alternatives_not_exhausted"
)
APPROVE = DecisionForm(
    rationale="Necessary and proportionate for this robbery.", conditions="Delete in 30 days"
)


def _environment(database_url: str, folder: Path) -> dict[str, str]:
    policy = folder / "policy.yml"
    policy.write_text(
        TEST_POLICY + "retention_days: {approved: 30, rejected: 10, withdrawn: 10, expired: 10}\n"
    )
    return {"FRBOT_DATABASE_URL": database_url, "FRBOT_POLICY_FILE": str(policy)}


@pytest.fixture
def run(database_url: str, tmp_path: Path):
    """The command as an operator runs it: a separate process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRBOT_")}
    env.update(_environment(database_url, tmp_path), PYTHONPATH=str(ROOT))

    def fr_bot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return fr_bot


@pytest.fixture
def cli(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The same entry point in this process: quicker where the process boundary is not what is tested."""
    from bot.cli import main

    for key in [k for k in os.environ if k.startswith("FRBOT_")]:
        monkeypatch.delenv(key)
    for key, value in _environment(database_url, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    def fr_bot(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse refusing the arguments
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return fr_bot


def history(workflow: Workflow) -> tuple[str, str]:
    """A rejected request with a question, and an approved one; returns their references."""
    first = workflow.submit(check_request(workflow.policy, valid_form_values()), "UOFFICER", "T0", "V1")
    workflow.request_info(first.request_id, 0, "USUP1", "Which exhibit is the still from?", "Q1")
    workflow.decide(first.request_id, 0, "USUP1", "reject", REJECT)
    second = workflow.submit(
        check_request(workflow.policy, valid_form_values(tool="engine-a")), "UOFFICER2", "T0", "V2"
    )
    for position, approver in ((0, "USUP2"), (1, "UAUTH1"), (1, "UAUTH2"), (2, "UDPO1")):
        workflow.decide(second.request_id, position, approver, "approve", APPROVE)
    workflow.record_refused_submission("UOFFICER3", "engine-b", {"tool": "Engine B is prohibited"})
    return first.reference, second.reference


def test_verify_exit_codes_name_the_first_broken_link(workflow: Workflow, engine: Engine, run) -> None:
    history(workflow)
    intact = run("audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert "audit chain intact" in intact.stdout
    with attacker(engine) as conn:
        conn.execute(text("UPDATE audit_events SET actor_id = 'UEVIL' WHERE seq = 3"))
        conn.execute(text("DELETE FROM audit_events WHERE seq = 6"))
    broken = run("audit", "verify")
    assert broken.returncode == 1
    assert "first broken link: seq 3 (event id 3): edited" in broken.stdout
    assert "seq 7 (event id 7): deleted: 1 event(s) missing before this one (seq 6 deleted)" in broken.stdout
    assert "Traceback" not in broken.stderr


def test_verify_checks_anchors(workflow: Workflow, cli) -> None:
    run = cli
    history(workflow)
    head = run("audit", "verify").stdout.split("head seq ")[1].split()
    seq, digest = head[0], head[2]
    assert run("audit", "verify", "--anchor", f"{seq}:{digest}").returncode == 0
    assert run("audit", "verify", "--anchor", f"{seq}:{'a' * 64}").returncode == 1


def test_an_actor_too_long_to_store_is_refused_not_cut(workflow: Workflow, run) -> None:
    """`--actor` was cut to 32 characters, so two operators whose names share 32 characters were recorded
    as one; `outbox retry` took no `--actor` at all. A name too long is refused before anything is done."""
    reference, _ = history(workflow)
    long_name = "cli:a.very.long.name@force.police.uk"
    for command in (("audit", "show", reference), ("audit", "hold", reference, "--reason", "CPS asked")):
        refused = run(*command, "--actor", long_name)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [
            f"fr-bot: --actor: at most 32 characters ({long_name!r} has {len(long_name)})"
        ]
    refused = run("outbox", "retry", "--all-dead", "--actor", long_name)
    assert refused.returncode == 2 and "at most 32 characters" in refused.stderr, refused.stderr
    with transaction(workflow.db) as session:
        actions = set(session.scalars(select(AuditEvent.action)))
    assert not actions & {"request_viewed", "legal_hold_placed"}, actions
    assert run("outbox", "retry", "--all-dead", "--actor", "UADMIN").returncode == 0


def test_a_login_name_too_long_to_record_asks_for_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from bot import cli

    monkeypatch.setenv("LOGNAME", "svc-retention-purge-nightly-job")  # cli: and 31 characters
    with pytest.raises(cli.CliError, match=r"login name is too long .*: give --actor"):
        cli.operator_actor(argparse.Namespace(actor=None))
    assert cli.operator_actor(argparse.Namespace(actor="UADMIN")) == "UADMIN"
    for blank in ("", "   "):  # recorded an event by nobody
        with pytest.raises(cli.CliError, match="give a name, not a blank"):
            cli.operator_actor(argparse.Namespace(actor=blank))
    monkeypatch.setenv("LOGNAME", "jsmith")
    assert cli.operator_actor(argparse.Namespace(actor=None)) == "cli:jsmith"


def test_show_prints_the_timeline_and_logs_the_view(workflow: Workflow, engine: Engine, run) -> None:
    reference, _ = history(workflow)
    shown = run("audit", "show", reference.lower(), "--actor", "UANALYST")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"# {reference}: evidence timeline" in out
    assert "Identify the suspect in a street robbery caught on CCTV." in out
    assert "**Rejected** by USUP1" in out and "alternatives_not_exhausted" in out
    assert "Which exhibit is the still from?" in out
    assert "| request_submitted |" in out and "| decision_recorded |" in out
    assert "## Access log (1 views)" in out and "| UANALYST | cli show |" in out
    with transaction(workflow.db) as session:
        viewed = session.scalars(select(AuditEvent).where(AuditEvent.action == "request_viewed")).one()
    assert (viewed.actor_id, viewed.details, viewed.request_id) == ("UANALYST", {"surface": "cli show"}, 1)
    with engine.begin() as conn:  # the chain head removed: the view cannot be logged, so nothing is shown
        conn.execute(text("DELETE FROM audit_chain_head"))
    refused = run("audit", "show", reference)
    assert refused.returncode == 1 and "audit_chain_head is missing" in refused.stderr
    assert refused.stdout == ""
    missing = run("audit", "show", "FR-2026-99999")
    assert missing.returncode == 2 and missing.stderr.strip() == "fr-bot: no request FR-2026-99999"


def test_export_streams_every_event_in_range_as_csv_and_jsonl(
    workflow: Workflow, run, tmp_path: Path
) -> None:
    history(workflow)
    # More events than one streaming batch of the export.
    start = datetime(2026, 4, 1, tzinfo=UTC)
    with transaction(workflow.db) as session:
        for index in range(2500):
            append_event(
                session, "UREADER", "request_viewed", 1, start + timedelta(minutes=index), {"surface": "x"}
            )
    with transaction(workflow.db) as session:
        expected = [
            (e.seq, e.hash)
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.created_at >= start).order_by(AuditEvent.seq)
            )
        ]
    assert len(expected) == 2500

    done = run(
        "audit",
        "export",
        "--since",
        "2026-04-01",
        "--until",
        "2026-06-30",
        "--format",
        "csv",
        "--out",
        "x.csv",
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x.csv").read_text())))
    assert [(int(r["seq"]), r["hash"]) for r in rows] == expected
    assert rows[0]["reference"] == "FR-2026-00001" and json.loads(rows[0]["details"]) == {"surface": "x"}

    jsonl = run("audit", "export", "--since", "2026-03-01", "--until", "2026-03-31", "--format", "jsonl")
    assert jsonl.returncode == 0, jsonl.stderr
    events = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [e["action"] for e in events][:2] == ["request_submitted", "request_routed"]
    assert all(e["created_at"].startswith("2026-03") for e in events)
    for event in events:  # each exported event carries what is needed to recompute its hash
        moment = datetime.strptime(event["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert event["hash"] == event_hash(
            event["seq"],
            event["request_id"],
            event["actor"],
            event["action"],
            event["details"],
            moment,
            event["prev_hash"],
        )
    # Free text stays sealed unless asked for, and asking for it is logged per request.
    assert "Identify the suspect" not in jsonl.stdout
    with_text = run(
        "audit", "export", "--since", "2026-03-01", "--until", "2026-03-31", "--with-text", "--actor", "UFOI"
    )
    assert "Identify the suspect" in with_text.stdout
    with transaction(workflow.db) as session:
        logged = list(
            session.execute(
                select(AuditEvent.action, AuditEvent.actor_id, AuditEvent.request_id).where(
                    AuditEvent.actor_id == "UFOI"
                )
            )
        )
    assert ("audit_exported", "UFOI", None) in logged
    assert {r for a, _, r in logged if a == "request_viewed"} == {1, 2}


class _ClosedAfterOneWrite(io.StringIO):
    """A reader that goes away after the first write (`… | head -1`)."""

    def write(self, text: str) -> int:
        if self.getvalue():
            raise BrokenPipeError("the reader is gone")
        return super().write(text)


def test_an_export_cut_short_is_logged_with_the_views_it_disclosed(
    workflow: Workflow, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free text reached the reader before the pipe closed: the export and the requests' views are on
    record although it stopped (they were appended after the last row, so nothing was)."""
    history(workflow)
    monkeypatch.setattr(sys, "stdout", _ClosedAfterOneWrite())
    cut = cli(
        "audit", "export", "--since", "2026-03-01", "--until", "2026-03-31", "--with-text", "--actor", "UFOI"
    )
    assert cut.returncode == 2 and "export stopped: the output was closed" in cut.stderr
    with transaction(workflow.db) as session:
        logged = list(
            session.execute(
                select(AuditEvent.action, AuditEvent.request_id).where(AuditEvent.actor_id == "UFOI")
            )
        )
    assert ("audit_exported", None) in logged
    assert {r for a, r in logged if a == "request_viewed"} == {1, 2}


def test_pack_holds_timeline_raw_events_and_their_verification(
    workflow: Workflow, run, tmp_path: Path
) -> None:
    _, reference = history(workflow)
    done = run("audit", "pack", reference, "--out", "pack", "--actor", "UCOURT")
    assert done.returncode == 0, done.stderr
    pack = tmp_path / "pack"
    assert {p.name for p in pack.iterdir()} == {
        "timeline.md",
        "events.jsonl",
        "texts.jsonl",
        "verification.txt",
        "verify_pack.py",
        "manifest.json",
    }
    manifest = json.loads((pack / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((pack / name).read_bytes()).hexdigest() == digest
    events = [json.loads(line) for line in (pack / "events.jsonl").read_text().splitlines()]
    assert [e["action"] for e in events].count("decision_recorded") == 4
    assert events[-1]["action"] == "request_viewed" and events[-1]["actor"] == "UCOURT"
    texts = [json.loads(line) for line in (pack / "texts.jsonl").read_text().splitlines()]
    committed = {(e["seq"], path) for e in events for path in _sealed(e["details"])}
    assert {(t["seq"], t["path"]) for t in texts} == committed
    for t in texts:
        event = next(e for e in events if e["seq"] == t["seq"])
        value = event["details"]
        for part in t["path"].split("."):
            value = value[part]
        assert hashlib.sha256(bytes.fromhex(t["salt"]) + t["text"].encode()).hexdigest() == value["$sealed"]
    verification = (pack / "verification.txt").read_text()
    assert "Whole chain: INTACT" in verification
    assert "failing their own hash or commitments: 0" in verification
    assert (
        "consistent: every justification, rationale, condition, question and answer matches" in verification
    )
    assert "Necessary and proportionate for this robbery." in (pack / "timeline.md").read_text()

    # The pack's own checker, run by someone without the bot: passes, then catches an altered text.
    checked = subprocess.run([sys.executable, "verify_pack.py"], cwd=pack, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    altered = (pack / "texts.jsonl").read_text().replace("Necessary and proportionate", "Not necessary")
    (pack / "texts.jsonl").write_text(altered)
    checked = subprocess.run([sys.executable, "verify_pack.py"], cwd=pack, capture_output=True, text=True)
    assert checked.returncode == 1
    assert "texts.jsonl: does not match the manifest" in checked.stdout
    assert "does not match its commitment" in checked.stdout


def test_a_pack_flags_a_record_edited_behind_the_audit_trail(
    workflow: Workflow, cli, engine: Engine, tmp_path: Path
) -> None:
    """The decisions, questions and requests tables are not append-only: a rationale, a question or a
    justification edited in them made a pack whose timeline showed the edit while it said the chain was
    intact. Now the pack compares them with the trail's kept texts and says where they differ."""
    rejected, _ = history(workflow)
    with engine.begin() as conn:
        conn.execute(text("UPDATE decisions SET rationale = 'All alternatives exhausted.'"))
        conn.execute(text("UPDATE info_requests SET question = 'Nothing to ask.'"))
        conn.execute(text("UPDATE fr_requests SET necessity = 'Obviously necessary.'"))
    done = cli("audit", "pack", rejected, "--out", "pack", "--actor", "UCOURT")
    assert done.returncode == 0, done.stderr
    assert "differs from its audit trail" in done.stderr
    verification = (tmp_path / "pack" / "verification.txt").read_text()
    assert "Whole chain: INTACT" in verification  # the chain itself was not touched
    differs = [line for line in verification.splitlines() if "DIFFERS" in line]
    assert any("necessity differs from its submission" in line for line in differs)
    assert any("rationale of the reject by USUP1 (supervisor)" in line for line in differs)
    assert any("questions or answers of the supervisor stage" in line for line in differs)
    assert "the record below differs from the audit trail" in (tmp_path / "pack" / "timeline.md").read_text()


def _sealed(details: object, path: str = "") -> list[str]:
    if isinstance(details, dict):
        if set(details) == {"$sealed"}:
            return [path]
        return [p for k, v in details.items() for p in _sealed(v, f"{path}.{k}" if path else k)]
    return []


def test_hold_preview_purge_and_verify_again(workflow: Workflow, cli) -> None:
    run = cli
    rejected, approved = history(workflow)
    held = run("audit", "hold", approved, "--reason", "Judicial review lodged", "--actor", "UDPO1")
    assert held.returncode == 0 and "placed on legal hold" in held.stdout
    preview = run("retention", "preview")
    assert preview.returncode == 0, preview.stderr
    assert f"purge {rejected} rejected" in preview.stdout
    assert f"HELD  {approved} approved" in preview.stdout
    purge = run("retention", "purge")
    assert purge.returncode == 0, purge.stderr
    assert f"purged 1 request(s)\n  {rejected}:" in purge.stdout
    assert run("audit", "verify").returncode == 0
    shown = run("audit", "show", rejected).stdout
    assert "Removed under the retention policy" in shown
    assert "Identify the suspect" not in shown and "Which exhibit" not in shown
    assert "[removed under the retention policy]" in shown
    released = run("audit", "release", approved, "--reason", "Review dismissed")
    assert released.returncode == 0 and "released from legal hold" in released.stdout
    assert "purged 1 request(s)" in run("retention", "purge").stdout
    assert run("audit", "verify").returncode == 0


def test_report_writes_markdown_csv_and_chart(workflow: Workflow, cli, tmp_path: Path) -> None:
    run = cli
    history(workflow)
    done = run("report", "--month", "2026-03", "--out", "reports")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "reports"
    markdown = (folder / "fr-report-2026-03.md").read_text()
    assert "**2 requests.**" in markdown
    assert "| Force RFR | 1 |" in markdown and "| Engine A | 1 |" in markdown
    assert "| rejected | 1 |" in markdown and "| approved | 1 |" in markdown
    assert "| USUP1 | 1 | 0 | 1 | 0% |" in markdown
    assert "| UAUTH1 | 1 | 1 | 0 | 100% |" in markdown
    assert "1 attempts by 1 officer(s)" in markdown and "- engine-b: 1" in markdown
    rows = list(csv.DictReader((folder / "fr-report-2026-03.csv").open()))
    by_key = {(r["section"], r["key"], r["metric"]): r["value"] for r in rows}
    assert by_key[("total", "requests", "count")] == "2"
    assert by_key[("reviewer", "UAUTH2", "approval_rate")] == "1.0"
    assert by_key[("prohibited_attempts", "engine-b", "count")] == "1"
    assert (folder / "fr-report-2026-03.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = run("report", "--month", "2025-01", "--out", "reports")
    assert empty.returncode == 0 and "**0 requests.**" in (folder / "fr-report-2025-01.md").read_text()
    bad = run("report", "--month", "2026-13")
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


@pytest.mark.parametrize("leads_channel_takes_it", [True, False])
def test_fr_bot_digest_says_whether_slack_took_it(
    workflow: Workflow, cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, leads_channel_takes_it: bool
) -> None:
    """It printed "digest sent" after one pass of the outbox whatever became of the post: refused by
    Slack (dead) or not taken yet, the operator was told it was sent."""
    import logging

    from tests.slackstub import SlackStub

    root, client_log = logging.getLogger(), logging.getLogger("slack_sdk.web.base_client")
    # The command configures logging as the bot does (a handler on this test's captured stderr): put the
    # loggers back after it, or later tests log to a closed stream.
    handlers, level, client_level = root.handlers[:], root.level, client_log.level
    clock_file = tmp_path / "now.txt"
    clock_file.write_text("2026-03-02T09:00:00+00:00")  # after the 08:00 digest time, London on GMT
    with SlackStub() as stub:
        if not leads_channel_takes_it:
            stub.not_in_channel.add("C0LEADS")
        monkeypatch.setenv("FRBOT_TEST_CLOCK_FILE", str(clock_file))
        monkeypatch.setenv("FRBOT_SLACK_BOT_TOKEN", stub.bot_token)
        monkeypatch.setenv("FRBOT_SLACK_API_URL", stub.base_url)
        try:
            done = cli("digest")
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            client_log.setLevel(client_level)
    if leads_channel_takes_it:
        assert done.returncode == 0 and "digest sent" in done.stdout, done
    else:
        assert done.returncode == 2 and "the digest was not sent: not_in_channel" in done.stderr, done


def test_admin_mistakes_are_one_line_and_log_nothing(workflow: Workflow, cli, engine: Engine) -> None:
    """An --out that cannot be written, a month not begun, a reference pasted with a space: each was a
    traceback (and the export logged disclosures that never happened) or a refusal of a good reference."""
    first, _ = history(workflow)
    bad_out = cli(
        "audit", "export", "--since", "2026-03-01", "--until", "2026-03-31", "--with-text",
        "--actor", "UFOI", "--out", "missing-folder/x.csv",
    )  # fmt: skip
    assert bad_out.returncode == 2 and "cannot write" in bad_out.stderr and "Traceback" not in bad_out.stderr
    with transaction(workflow.db) as session:
        logged = session.scalars(select(AuditEvent.action).where(AuditEvent.actor_id == "UFOI")).all()
    assert logged == []
    future = cli("report", "--month", "2999-01", "--out", "report")
    assert future.returncode == 2 and "has not begun" in future.stderr
    assert cli("report", "--month", "9999-12").returncode == 2
    held = cli(
        "audit", "hold", f"  {first.lower()} ", "--reason", "Judicial review lodged", "--actor", "ULEGAL"
    )
    assert held.returncode == 0 and f"{first} placed on legal hold" in held.stdout, held


def test_a_database_newer_than_the_code_is_one_line_not_a_traceback(
    workflow: Workflow, cli, engine: Engine
) -> None:
    with engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    try:
        for command in (("migrate",), ("audit", "verify")):
            done = cli(*command)
            assert done.returncode == 2 and "newer than this fr-bot" in done.stderr, (command, done)
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
