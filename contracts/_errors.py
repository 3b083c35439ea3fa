"""Errors raised by the contracts package (the root of recstream's error tree).

RecstreamError (retriable: bool)
└── ContractViolation          an event that breaks its contract
    └── DecodeError            raised by a codec; names the offending field
"""

from __future__ import annotations


class RecstreamError(Exception):
    """Base of every error recstream raises on purpose.

    ``retriable`` says whether the same operation may succeed if tried again;
    the stream error handler retries retriable errors and dead-letters the rest.
    """

    retriable: bool = False


class ContractViolation(RecstreamError):
    """An event does not satisfy its topic's contract. Retrying cannot help."""

    retriable = False


class DecodeError(ContractViolation):
    """A payload could not be decoded into its event type.

    ``field`` is a JSON-pointer-like dotted path to the offending field
    (``"items[3].item_id"``), or ``"$"`` when the payload as a whole is at fault
    (not JSON, not UTF-8, too large). ``reason`` is a short human-readable
    sentence. Neither contains the payload itself, so they are safe to log.
    """

    def __init__(self, schema: str, field: str, reason: str) -> None:
        super().__init__(f"{schema}: {field}: {reason}")
        self.schema = schema
        self.field = field
        self.reason = reason
