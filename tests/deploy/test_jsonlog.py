"""Structured logs: one JSON object per line, with the fields log shippers index."""

from __future__ import annotations

import io
import logging
import logging.config

import orjson
import pytest

from streams.jsonlog import JsonFormatter, configure, worker_logging_config


def _record(logger: str = "streams.app") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(logger)
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, stream


def test_a_line_is_one_json_object_with_the_indexed_fields() -> None:
    log, stream = _record()
    log.info("batch role=%s in=%d", "requests", 12, extra={"role": "requests"})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "batch role=requests in=12"
    assert first["level"] == "INFO" and first["logger"] == "streams.app"
    assert first["role"] == "requests" and isinstance(first["pid"], int)
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_odd_extra_values_never_break_a_line() -> None:
    log, stream = _record("odd")
    log.warning("x", extra={"thing": object(), "n": {1, 2}})
    line = orjson.loads(stream.getvalue())
    assert line["thing"].startswith("<object") and line["msg"] == "x"


def test_worker_config_is_none_for_text_and_a_json_handler_for_json() -> None:
    assert worker_logging_config("text", "INFO") is None
    config = worker_logging_config("JSON", "DEBUG")
    assert config is not None
    assert config["formatters"]["json"]["()"] is JsonFormatter
    assert config["root"]["level"] == "DEBUG"
    with pytest.raises(ValueError, match="log format"):
        worker_logging_config("yaml", "INFO")
    assert callable(configure)
