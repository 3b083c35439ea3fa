"""Structured logs: one JSON object per line, for log shippers in Kubernetes.

Opt-in with ``RECSTREAM_LOG_FORMAT=json``; the default stays faust's readable
text. Each line has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger``, ``msg`` (the %-formatted message), ``pid``, and ``exc`` when an
exception is attached; fields given with ``extra=`` are kept as they are.
"""

from __future__ import annotations

import logging
import logging.config
import os
import time
from typing import Any, Final

import orjson

__all__ = ["FORMATS", "JsonFormatter", "configure", "worker_logging_config"]

FORMATS: Final = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never raises on odd ``extra`` values)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=repr).decode()


def _check(log_format: str) -> str:
    fmt = log_format.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {log_format!r}")
    return fmt


def worker_logging_config(log_format: str, level: str) -> dict[str, Any] | None:
    """The ``logging_config`` for ``faust.Worker``: JSON lines on stderr, or ``None``
    (faust's own text logging) for the text format."""
    if _check(log_format) == "text":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "level": level,
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(log_format: str, level: str) -> None:
    """Set up the root logger of a command that is not a faust worker (replay, topics)."""
    config = worker_logging_config(log_format, level)
    if config is None:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    else:
        logging.config.dictConfig(config)
