"""Logging: a file per environment under <home>/<env>/log, warnings on stderr, secrets redacted."""

from __future__ import annotations

import logging
import logging.handlers

from stave.infra.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replace every configured secret in a record's final message with `***`."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = message
        exc_text = record.exc_text
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
            if exc_text:
                exc_text = exc_text.replace(secret, "***")
        record.msg, record.args, record.exc_text = redacted, None, exc_text
        return True


OWN_LOGGERS = ("stave",)


# `extra=FILE_ONLY` keeps a record off the terminal: a traceback the user was told about in
# one line goes to the log file alone.
FILE_ONLY = {"file_only": True}


def _ours_or_critical(record: logging.LogRecord) -> bool:
    # Libraries' warnings and errors (urllib3 retries, a Prefect task run that failed and was
    # reported) go to the log file; the terminal gets Stave's own, and a library's critical.
    if getattr(record, "file_only", False):
        return False
    return record.name.split(".")[0] in OWN_LOGGERS or record.levelno >= logging.CRITICAL


class _WithoutTraceback(logging.Formatter):
    """The terminal's format: the message line only; tracebacks are for the log file."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


_configured = False


def is_configured() -> bool:
    return _configured


def configure_logging(settings: Settings, *, stderr_level: int = logging.WARNING) -> None:
    """Send logs to <log_dir>/stave.log (rotated) and warnings to stderr; idempotent."""
    global _configured
    if _configured:
        return
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    redact = RedactSecrets(settings.secret_values())
    file_handler = logging.handlers.RotatingFileHandler(
        settings.log_dir / "stave.log", maxBytes=20 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    file_handler.setLevel(settings.log_level)
    stderr_handler = logging.StreamHandler()
    stderr_handler.setLevel(stderr_level)
    stderr_handler.addFilter(_ours_or_critical)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    stderr_handler.setFormatter(_WithoutTraceback(LOG_FORMAT))
    for handler in (file_handler, stderr_handler):
        handler.addFilter(redact)
    root = logging.getLogger()
    root.setLevel(min(logging.getLevelName(settings.log_level), stderr_level))
    root.addHandler(file_handler)
    root.addHandler(stderr_handler)
    _configured = True
