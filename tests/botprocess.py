"""Run the real bot (`python -m bot.cli run --mode http`) as a child process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIGNING_SECRET = "e2e-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-token"


# APScheduler logs each job it ran; this one is the sweep.
SWEEP_FINISHED = 'Job "reminders, escalations, approval warnings, digest catch-up'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(database_url: str, policy_file: Path, slack_api_url: str, **settings: str) -> dict[str, str]:
    """A bot process's environment: this one's without its FRBOT_ settings, then the test's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRBOT_")}
    env.update(
        FRBOT_SLACK_BOT_TOKEN=BOT_TOKEN,
        FRBOT_SLACK_API_URL=slack_api_url,
        FRBOT_DATABASE_URL=database_url,
        FRBOT_POLICY_FILE=str(policy_file),
        FRBOT_OUTBOX_POLL_SECONDS="0.2",
        PYTHONPATH=str(ROOT),
    )
    env.update(settings)
    return env


def child_processes(pid: int) -> list[int]:
    """A process's children (the bot's follow-up process and multiprocessing's resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def is_follow_up_process(pid: int) -> bool:
    """Started by multiprocessing's spawn, as the follow-up process is (the resource tracker, the other
    child spawn starts, is not)."""
    try:
        return b"--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def follow_up_processes(pid: int) -> list[int]:
    """The bot's follow-up process(es)."""
    return [child for child in child_processes(pid) if is_follow_up_process(child)]


class BotProcess:
    def __init__(
        self, database_url: str, policy_file: Path, slack_api_url: str, workdir: Path, **env: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/slack/events"
        self.log_path = workdir / f"bot-{self.port}.log"
        defaults = {
            "FRBOT_MODE": "http",
            "FRBOT_HTTP_HOST": "127.0.0.1",
            "FRBOT_HTTP_PORT": str(self.port),
            "FRBOT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "FRBOT_LOG_LEVEL": "INFO",
            # The interactive tests count messages; reminders and digests have their own process tests.
            "FRBOT_SCHEDULER_ENABLED": "false",
        }
        self.env = child_env(database_url, policy_file, slack_api_url, **{**defaults, **env})
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, args: tuple[str, ...] = ()) -> BotProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bot exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"bot did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code


class BackgroundProcess:
    """`fr-bot scheduler` (or another command without an HTTP server, such as `worker`) as a child process."""

    def __init__(
        self,
        database_url: str,
        policy_file: Path,
        slack_api_url: str,
        workdir: Path,
        command: str = "scheduler",
        **env: str,
    ) -> None:
        self.env = child_env(
            database_url, policy_file, slack_api_url, **{"FRBOT_SCHEDULER_INTERVAL_SECONDS": "0.5", **env}
        )
        self.command = command
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{command}.log"
        self.log_start = 0

    def start(self) -> BackgroundProcess:
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", self.command],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sweeps_finished(self) -> int:
        """How many sweeps this run of the process has finished (APScheduler logs each job it ran)."""
        if not self.log_path.exists():
            return 0
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace").count(SWEEP_FINISHED)
