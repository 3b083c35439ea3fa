"""Turning a refused record into a DeadLetter event (raw payload kept)."""

from __future__ import annotations

import base64
import time
from typing import Final

from contracts import DeadLetter, DecodeError, derive_id

__all__ = ["MAX_DEAD_PAYLOAD", "dead_letter"]

# Keep up to 256 KiB of the raw payload: enough to replay any valid event
# (inputs are at most 128 KiB), while an oversize hostile payload cannot make
# the dead letter itself exceed the broker's message size.
MAX_DEAD_PAYLOAD: Final = 256 * 1024


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    payload: bytes | None,
    error: BaseException,
) -> DeadLetter:
    """The dead letter for one record; its id is derived from the record's position."""
    raw = payload or b""
    field = error.field if isinstance(error, DecodeError) else None
    reason = error.reason if isinstance(error, DecodeError) else str(error) or type(error).__name__
    return DeadLetter(
        dead_letter_id=derive_id("dlq", topic, partition, offset),
        source_topic=topic,
        partition=partition,
        offset=offset,
        key_b64=base64.b64encode(key[:3072]).decode() if key is not None else None,
        payload_b64=base64.b64encode(raw[:MAX_DEAD_PAYLOAD]).decode(),
        payload_size=len(raw),
        payload_truncated=len(raw) > MAX_DEAD_PAYLOAD,
        error_type=type(error).__name__,
        field=field[:256] if field else None,
        reason=reason[:2000],
        ts_ms=int(time.time() * 1000),
    )
