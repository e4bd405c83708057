"""Structured logs: one JSON object per line on stderr (or a readable form for terminals)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def resolved_format(log_format: str, stream: TextIO = sys.stderr) -> str:
    """``auto`` is ``console`` on a terminal (a person reads it) and ``json`` anywhere else."""
    if log_format != "auto":
        return log_format
    return "console" if stream.isatty() else "json"


def configure_logging(log_format: str) -> None:
    renderer = (structlog.processors.JSONRenderer() if resolved_format(log_format) == "json"
                else structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
