"""Text normalisation that runs before any safety check looks at text.

Checks that read raw text are blind to what a renderer or a reader will see:
a zero-width space inside ``java\u200bscript:``, an 8-bit CSI (``\\x9b``), a
secret in full-width or Cyrillic letters, ``&#64;`` for ``@``. Everything in
:mod:`workers.llm.safety`, :mod:`workers.llm.pii` and
:mod:`workers.llm.grounding` therefore checks :func:`normalize`'d text.

* :func:`normalize`: HTML entities decoded (twice, for double encoding), ANSI
  escape sequences removed, NFKC, format characters (zero-width, bidi
  controls, soft hyphen) and C0/C1 controls dropped, any whitespace run -> one
  space.
* :func:`skeleton`: :func:`normalize`, lower-cased, with look-alike letters
  mapped to the ASCII letter they imitate (Unicode confusables, via
  ``confusable-homoglyphs``' table), for "does this spell X" checks only.
* :func:`project`: :func:`normalize` with a map back to the original text, so
  PII found in the normalised view can be cut out of the original, leaving
  every other character as it was.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache
from typing import Final

__all__ = ["normalize", "project", "skeleton"]

_ENTITY = re.compile(r"&(?:#[0-9]{1,7};?|#[xX][0-9a-fA-F]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};)")
# CSI (ESC [ or 8-bit 0x9b) and OSC (ESC ] or 0x9d, ended by BEL or ST)
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]{0,512}(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[@-Z\\-_]"
)
_WS: Final = re.compile(r"\s+")
# Text without these is its own normalised view (the common case, kept fast).
_PLAIN_NEEDED: Final = re.compile(r"[^\x20-\x7e\t\n\r]|&")
# Whitespace-like controls become a space rather than vanish (words stay apart).
_SPACE_CONTROLS: Final = frozenset("\t\n\r\x0b\x0c\x85\u2028\u2029")


def _char(ch: str) -> str:
    """What one character contributes to the normalised text."""
    if ch in _SPACE_CONTROLS:
        return " "
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
        return ""
    if ch.isascii():
        return ch
    return unicodedata.normalize("NFKC", ch)


def _decode_entities(text: str) -> str:
    for _ in range(2):
        if "&" not in text:
            break
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return text


def normalize(text: str) -> str:
    """``text`` as a reader sees it, with hidden characters and encodings removed."""
    if not _PLAIN_NEEDED.search(text):
        return _WS.sub(" ", text).strip()
    text = _decode_entities(text)
    text = _ANSI.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_char(ch) for ch in text)
    # NFKC after dropping format characters: "ﬁ" split by a ZWJ composes again
    text = unicodedata.normalize("NFKC", text)
    return _WS.sub(" ", text).strip()


@lru_cache(maxsize=1)
def _confusables() -> dict[int, str]:
    # no type information shipped: a plain dict of lists of dicts
    from confusable_homoglyphs.confusables import confusables_data  # type: ignore[import-untyped]

    table: dict[int, str] = {}
    for ch, glyphs in confusables_data.items():
        if len(ch) != 1 or ch.isascii():
            continue
        for glyph in glyphs:
            target = glyph["c"]
            if target.isascii() and target.isalnum():
                table[ord(ch)] = target.lower()
                break
    return table


def skeleton(text: str) -> str:
    """Lower-cased :func:`normalize`'d text with look-alike letters mapped to ASCII."""
    norm = normalize(text).lower()
    return norm if norm.isascii() else norm.translate(_confusables())


def project(text: str) -> tuple[str, list[int]]:
    """``(view, origin)``: a normalised view of ``text`` and, for each view
    character, the index in ``text`` it came from (``origin[len(view)]`` is
    ``len(text)``).

    Unlike :func:`normalize` it keeps whitespace as it is and works character
    by character (entities count as one character), so spans map back exactly.
    """
    if not _PLAIN_NEEDED.search(text):
        return text, list(range(len(text) + 1))
    view: list[str] = []
    origin: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "&":
            m = _ENTITY.match(text, i)
            if m:
                decoded = html.unescape(m.group(0))
                if decoded != m.group(0):
                    for d in decoded:
                        out = _char(d) if d not in _SPACE_CONTROLS else d
                        view.extend(out)
                        origin.extend([i] * len(out))
                    i = m.end()
                    continue
        if ch in ("\x1b", "\x9b", "\x9d"):
            m = _ANSI.match(text, i)
            if m:
                i = m.end()
                continue
        out = ch if ch in _SPACE_CONTROLS else _char(ch)
        view.extend(out)
        origin.extend([i] * len(out))
        i += 1
    origin.append(n)
    return "".join(view), origin
