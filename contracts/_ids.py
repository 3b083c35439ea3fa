"""Deterministic output ids, derived from the cause of an output.

A replay of the same input must produce byte-identical ids so that consumers
can de-duplicate; so ids are hashes of what caused them, never random.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_id"]

# A unit separator cannot occur in contract ids (they match [A-Za-z0-9._:@-]),
# so ("a", "bc") and ("ab", "c") never hash the same input.
_SEPARATOR = "\x1f"


def derive_id(namespace: str, *parts: str | int) -> str:
    """Return a stable 32-hex-digit id for ``namespace`` and the cause ``parts``.

    >>> derive_id("rec", "request", "r-1") == derive_id("rec", "request", "r-1")
    True
    """
    text = _SEPARATOR.join([namespace, *map(str, parts)])
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
