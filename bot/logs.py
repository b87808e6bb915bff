"""Logging set-up with a filter that keeps Slack tokens and secrets out of every log line."""

from __future__ import annotations

import logging
import re

from slack_sdk.web import base_client

TOKEN = re.compile(r"\b(xox[abposre]|xapp)-[A-Za-z0-9-]+")


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s and len(s) >= 6]

    def redact(self, text: str) -> str:
        text = TOKEN.sub(lambda m: m.group(1) + "-[redacted]", text)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message or record.exc_info:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg, record.args = cleaned, None
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
        return True


def configure(level: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # slack_sdk's WebClient formats every request it sends (the whole modal or message) and every response
    # into a debug message unless its logger's own level is above DEBUG: it reads `logger.level`, which is
    # 0 (NOTSET) until set, not the effective level. Set it as Bolt sets its loggers, from the root's.
    logging.getLogger(base_client.__name__).setLevel(level)
