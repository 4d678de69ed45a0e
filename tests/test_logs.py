"""Configured secrets never reach a log line, even inside exception tracebacks."""

from __future__ import annotations

import logging

import pytest

from stave.infra.logs import RedactSecrets


def test_secrets_are_redacted_from_messages_args_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("stave.test.redact")
    logger.addFilter(RedactSecrets(["hunter2-secret", "AKIA-KEY-1"]))
    with caplog.at_level(logging.INFO, logger="stave.test.redact"):
        logger.info("connecting with %s and key %s", "hunter2-secret", "AKIA-KEY-1")
        try:
            raise RuntimeError("auth failed for password hunter2-secret")
        except RuntimeError:
            logger.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "hunter2-secret" not in text and "AKIA-KEY-1" not in text
    assert text.count("***") >= 3
