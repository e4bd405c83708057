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


class LineLogger(structlog.PrintLogger):
    """structlog's ``PrintLogger`` with each line written in one call: ``print`` writes the message
    and its newline apart, and the service, its detection worker and Mosquitto's plugin share one
    stderr, so a line longer than the stream's buffer (8 KB: a traceback, a long list) was written
    in two system calls and another process's line could land between them (seen: two JSON objects
    on one line, which a log reader cannot parse). One ``write`` of the whole line is one system
    call on a file opened for appending, whatever its length."""

    def msg(self, message: str) -> None:
        with self._lock:
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class LineLoggerFactory:
    """The logger factory of ``LineLogger`` on one stream (as ``structlog.PrintLoggerFactory``)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: object) -> LineLogger:
        return LineLogger(self._file)


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
        logger_factory=LineLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
