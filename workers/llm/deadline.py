"""Deadlines: every LLM call carries one, so nothing waits longer than its caller can."""

from __future__ import annotations

import time

__all__ = ["Deadline", "DeadlineLike"]


class Deadline:
    """An absolute point on the monotonic clock by which an answer is needed.

    Build one with :meth:`after`; every API that takes a ``deadline`` also
    accepts a plain number of seconds from now.
    """

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def coerce(cls, value: DeadlineLike) -> Deadline:
        return value if isinstance(value, Deadline) else cls.after(float(value))

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


DeadlineLike = Deadline | float
