"""APScheduler wiring: when the sweeps in bot/sweeps.py run. What is due, and who sends it, is decided in
the database, so any number of processes may run this scheduler at once.

Two jobs, with stable ids so a restart replaces rather than duplicates them:
- `fr-bot-sweeps` every `FRBOT_SCHEDULER_INTERVAL_SECONDS` (and once at start-up, which sends a digest
  missed while the bot was down if it is still within the policy's grace period);
- `fr-bot-digest` at the policy's digest time, a cron trigger in the policy's zone (the same wall-clock
  time all year), so the digest goes out on the minute rather than at the next interval.
Both coalesce missed runs into one and never run two instances at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from bot import retention
from bot.foreground import background_thread
from bot.policy import Policy
from bot.sweeps import SweepReport, run_sweeps, sweep_digests
from storage.db import DatabaseUnavailable
from storage.models import utcnow

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "fr-bot-sweeps"
DIGEST_JOB_ID = "fr-bot-digest"
RETENTION_JOB_ID = "fr-bot-retention"
RETENTION_LOCAL_HOUR = 2  # a quiet hour; each purged request is its own transaction, so reruns are safe


class SweepScheduler:
    def __init__(
        self,
        db: sessionmaker[Session],
        policy: Policy,
        clock: Callable[[], datetime] = utcnow,
        interval_seconds: float = 60.0,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock
        self.interval_seconds = interval_seconds
        # Called after a sweep queued messages, so the outbox dispatcher sends them at once.
        self._on_outbox = on_outbox
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        self._scheduler.add_job(
            self.sweep,
            IntervalTrigger(seconds=self.interval_seconds, timezone="UTC"),
            id=SWEEP_JOB_ID,
            name="reminders, escalations, approval warnings, digest catch-up",
            replace_existing=True,
            next_run_time=utcnow(),  # at once: catch up on what came due while the bot was down
            misfire_grace_time=max(1, int(self.interval_seconds)),
        )
        digest = self.policy.digest
        if digest.enabled and self.policy.leads_channel:
            self._scheduler.add_job(
                self.digest,
                CronTrigger(
                    hour=digest.local_time.hour, minute=digest.local_time.minute, timezone=self.policy.zone
                ),
                id=DIGEST_JOB_ID,
                name="leads' daily digest",
                replace_existing=True,
                misfire_grace_time=int(digest.grace_hours * 3600),
            )
        self._scheduler.add_job(
            self.purge,
            CronTrigger(hour=RETENTION_LOCAL_HOUR, minute=15, timezone=self.policy.zone),
            id=RETENTION_JOB_ID,
            name="retention purge",
            replace_existing=True,
            misfire_grace_time=6 * 3600,
        )
        self._scheduler.start()
        log.info("scheduler started: sweeps every %gs", self.interval_seconds)

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)  # let a running sweep finish its transaction
            log.info("scheduler stopped")

    def sweep(self) -> SweepReport | None:
        return self._run("sweep", lambda: run_sweeps(self.db, self.policy, self.clock))

    def digest(self) -> SweepReport | None:
        return self._run("digest", lambda: sweep_digests(self.db, self.policy, self.clock))

    @background_thread()
    def purge(self) -> int:
        """The daily retention purge (bot/retention.py); returns how many requests were redacted."""
        try:
            purged = retention.purge(self.db, self.policy, self.clock, on_outbox=self._on_outbox)
        except DatabaseUnavailable as exc:
            log.warning("retention purge: database unavailable, will retry tomorrow: %s", exc)
            return 0
        except Exception:
            log.exception("retention purge: unexpected error; the next run will retry")
            return 0
        if purged:
            log.info("retention purge: %d request(s) redacted", len(purged))
        return len(purged)

    @background_thread()
    def _run(self, what: str, work: Callable[[], SweepReport]) -> SweepReport | None:
        # A failed run changes nothing (each unit of work is one transaction); the next run retries.
        try:
            report = work()
        except DatabaseUnavailable as exc:
            log.warning("%s: database unavailable, will retry at the next run: %s", what, exc)
            return None
        except Exception:
            log.exception("%s: unexpected error; the next run will retry", what)
            return None
        if report.messages_queued:
            log.info("%s: %s", what, report)
            self._on_outbox()
        return report
