"""Safety at the LLM edge: redact personal data, fence user text, distrust output.

* :func:`redact` replaces e-mail addresses, card numbers (Luhn-checked),
  phone numbers, US social security numbers, IBANs and street addresses with
  typed placeholders before any text leaves the process (OWASP LLM02).
* :func:`fence` turns user- and catalog-supplied data into one JSON block
  inside ``<data>`` tags, with ``<``, ``>`` and ``&`` escaped so the data can
  never close the fence; instructions only ever live in the system message
  and say that fenced content is data, not instructions (OWASP LLM01).
* :func:`clean_text` treats model output as untrusted (OWASP LLM05): active
  markup (script, event handlers, ``javascript:`` URLs, iframes) is rejected,
  other tags are stripped, control characters removed and length capped.
* :class:`LeakGuard` refuses output that carries the canary token (also
  reversed, spaced out, base64 or hex) or a long verbatim run of the system
  prompt: the signs that a prompt injection worked.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any, Final

import orjson

from workers.llm.errors import UnsafeOutput

__all__ = ["LeakGuard", "clean_text", "fence", "redact"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# Phone numbers: an optional +country code, then 9+ digits in groups; needs a
# separator or a + so that plain long ids and years are left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?)?\d{2,5}(?:[ .\-]\d{2,6}){1,4}(?!\w)"
    r"|\+\d{9,15}(?!\d)"
)
_STREET_WORDS = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
    "terrace|parkway|pkwy|square|sq|highway|hwy|strasse|straße|rue|via|calle"
)
_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Za-zÀ-ÿ'.\-]+\s+){{0,4}}(?:{_STREET_WORDS})\b\.?"
    r"(?:,?\s*(?:apt|apartment|suite|unit|#)\s*[\w\-]+)?",
    re.IGNORECASE,
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[PHONE]" if len(digits) >= 9 else match.group(0)


def redact(text: str) -> str:
    """``text`` with personal data replaced by ``[EMAIL]``, ``[CARD]``, ``[PHONE]``..."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_card, text)
    text = _SSN.sub("[SSN]", text)
    text = _IBAN.sub("[IBAN]", text)
    text = _PHONE.sub(_phone, text)
    return _ADDRESS.sub("[ADDRESS]", text)


def redact_tree(value: Any) -> Any:
    """:func:`redact` applied to every string in a JSON-like tree (keys kept)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return value


def fence(data: Any) -> str:
    """``data`` as one JSON block inside ``<data>`` tags that the data cannot close."""
    body = orjson.dumps(data).decode()
    # Structural JSON never contains these characters, so escaping them
    # everywhere only touches string contents and keeps the JSON valid.
    body = body.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return f"<data>\n{body}\n</data>"


_ACTIVE_MARKUP = re.compile(
    r"<\s*/?\s*(?:script|iframe|object|embed|style|link|meta|form|svg|math|base)\b"
    r"|\bon[a-z]{3,}\s*="
    r"|(?:javascript|vbscript|data)\s*:"
    r"|\{\{.*?\}\}"
    r"|\$\{",
    re.IGNORECASE | re.DOTALL,
)
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>|<!--.*?-->", re.DOTALL)
_MD_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]{0,500})\]\([^)]{0,2000}\)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_WS = re.compile(r"\s+")


def clean_text(value: object, *, max_chars: int, field: str) -> str:
    """Model-produced text made safe to show: plain, short, no active markup.

    Raises :class:`UnsafeOutput` for active markup and returns the text with
    other tags and markdown links flattened to their words, control and
    bidi-override characters removed, whitespace collapsed and the length
    capped at ``max_chars`` (cut at a word, marked with an ellipsis).
    """
    if not isinstance(value, str):
        raise UnsafeOutput(f"{field}: expected text, got {type(value).__name__}")
    if _ACTIVE_MARKUP.search(value):
        raise UnsafeOutput(f"{field}: active markup in model output")
    text = _MD_IMAGE_OR_LINK.sub(r"\1", value)
    text = _TAG.sub(" ", text)
    text = text.replace("<", "‹").replace(">", "›")
    text = _CONTROL.sub("", text)
    text = _WS.sub(" ", text).strip()
    if len(text) > max_chars:
        cut = text[: max_chars - 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > max_chars // 2 else cut).rstrip() + "…"
    return text


_ALNUM = re.compile(r"[^0-9a-z]")
# A verbatim run of this many words from the system prompt counts as a leak.
_SHINGLE_WORDS: Final = 10


def _squash(text: str) -> str:
    return _ALNUM.sub("", text.lower())


class LeakGuard:
    """Detects secrets of the prompt showing up in model output."""

    def __init__(self, canaries: Iterable[str] = (), system_prompts: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for canary in canaries:
            if not canary:
                continue
            raw = canary.encode()
            for variant in (
                canary,
                canary[::-1],
                base64.b64encode(raw).decode().rstrip("="),
                base64.b32encode(raw).decode().rstrip("="),
                raw.hex(),
            ):
                squashed = _squash(variant)
                if len(squashed) >= 6:
                    forms.add(squashed)
        self._forms = tuple(forms)
        shingles: set[str] = set()
        for prompt in system_prompts:
            words = [w for w in (_squash(w) for w in prompt.split()) if w]
            for i in range(len(words) - _SHINGLE_WORDS + 1):
                shingles.add("".join(words[i : i + _SHINGLE_WORDS]))
        self._shingles = shingles

    def add_system_prompt(self, prompt: str) -> None:
        words = [w for w in (_squash(w) for w in prompt.split()) if w]
        for i in range(len(words) - _SHINGLE_WORDS + 1):
            self._shingles.add("".join(words[i : i + _SHINGLE_WORDS]))

    def check(self, text: str, *, field: str = "output") -> None:
        """Raise :class:`UnsafeOutput` if ``text`` leaks a canary or the system prompt."""
        squashed = _squash(text)
        for form in self._forms:
            if form in squashed:
                raise UnsafeOutput(f"{field}: canary token leaked")
        if self._shingles:
            words = [w for w in (_squash(w) for w in text.split()) if w]
            for i in range(len(words) - _SHINGLE_WORDS + 1):
                if "".join(words[i : i + _SHINGLE_WORDS]) in self._shingles:
                    raise UnsafeOutput(f"{field}: system prompt leaked")
