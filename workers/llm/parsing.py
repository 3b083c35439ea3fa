"""Validating parsers for model output: JSON out of text, then typed fields.

Model output is untrusted. These helpers extract one JSON object from the
answer (tolerating code fences and chatter around it), refuse oversize
answers before parsing, and read fields with their type, their count cap and
their length cap, passing every string through :func:`safety.clean_text`
(normalisation, markup, links, personal data) and the leak guard (canary,
system prompt, and, when bound to the call, grounding). Item ids are kept
only when they are in the candidate set.
Any violation raises :class:`InvalidOutput` (or a subclass) with a short
reason that never quotes the output.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

from workers.llm.errors import InvalidOutput, ResponseTooLarge
from workers.llm.safety import LeakGuard, clean_text

__all__ = ["Fields", "extract_json"]

#: answers longer than this are refused before any parsing
MAX_CONTENT_CHARS = 32_768


def extract_json(content: str, *, max_chars: int = MAX_CONTENT_CHARS) -> dict[str, Any]:
    """The first balanced JSON object in ``content``."""
    if len(content) > max_chars:
        raise ResponseTooLarge(f"answer is {len(content)} characters, cap is {max_chars}")
    # Matches found while scanning from an earlier brace are reused: a hostile
    # answer of 5,000 nested braces costs one scan, not 5,000 (seconds on the loop).
    matches: dict[int, int] = {}
    start = content.find("{")
    while start != -1:
        end = matches.get(start)
        if end is None:
            end = _matching_brace(content, start, matches)
        if end == -1:
            break
        try:
            value = orjson.loads(content[start : end + 1])
        except orjson.JSONDecodeError:
            start = content.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = content.find("{", end + 1)
    raise InvalidOutput("answer holds no JSON object")


def _matching_brace(text: str, start: int, found: dict[int, int] | None = None) -> int:
    """The index of the brace closing the one at ``start`` (-1 if none), strings
    skipped. ``found`` gets the match of every brace opened outside a string on
    the way: read from a fresh state at that brace, it would close at the same place."""
    opened: list[int] = []
    in_string, escaped = False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            opened.append(i)
        elif ch == "}":
            at = opened.pop()
            if found is not None:
                found[at] = i
            if not opened:
                return i
    return -1


class Fields:
    """Typed, capped, cleaned access to one JSON object from a model."""

    def __init__(self, obj: Any, guard: LeakGuard, *, where: str = "$") -> None:
        if not isinstance(obj, dict):
            raise InvalidOutput(f"{where}: expected an object, got {type(obj).__name__}")
        self.obj: dict[str, Any] = obj
        self.guard = guard
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}"

    def text(self, key: str, *, max_chars: int, required: bool = True, default: str = "") -> str:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidOutput(f"{self._name(key)}: missing")
            return default
        text = clean_text(value, max_chars=max_chars, field=self._name(key))
        self.guard.check(text, field=self._name(key))
        if required and not text:
            raise InvalidOutput(f"{self._name(key)}: empty")
        return text

    def texts(
        self, key: str, *, max_items: int, max_chars: int, required: bool = False
    ) -> tuple[str, ...]:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidOutput(f"{self._name(key)}: missing")
            return ()
        if not isinstance(value, list):
            raise InvalidOutput(f"{self._name(key)}: expected a list")
        out: list[str] = []
        for i, item in enumerate(value[: max_items * 2]):
            text = clean_text(item, max_chars=max_chars, field=f"{self._name(key)}[{i}]")
            # tags, not prose: ids and users are checked, claims are not
            self.guard.check(text, field=self._name(key), claims=False)
            if text and text not in out:
                out.append(text)
        return tuple(out[:max_items])

    def choice(self, key: str, allowed: Collection[str]) -> str:
        value = self.obj.get(key)
        if not isinstance(value, str):
            raise InvalidOutput(f"{self._name(key)}: expected one of the allowed values")
        norm = value.strip().lower().replace(" ", "_").replace("-", "_")
        if norm not in allowed:
            raise InvalidOutput(f"{self._name(key)}: not one of the allowed values")
        return norm

    def item_id(self, key: str, allowed: Collection[str]) -> str:
        value = self.obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or value not in allowed:
            raise InvalidOutput(f"{self._name(key)}: not an item id from the candidate set")
        return value

    def item_ids(
        self, key: str, allowed: Collection[str], *, max_items: int, min_items: int = 1
    ) -> tuple[str, ...]:
        """Ids in order, de-duplicated, invented ones dropped; too few valid ones -> error."""
        value = self.obj.get(key)
        if not isinstance(value, list):
            raise InvalidOutput(f"{self._name(key)}: expected a list of item ids")
        out: list[str] = []
        for raw in value[: max(len(allowed), max_items) * 2]:
            item = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
            if isinstance(item, str) and item in allowed and item not in out:
                out.append(item)
        if len(out) < min_items:
            raise InvalidOutput(f"{self._name(key)}: too few item ids from the candidate set")
        return tuple(out[:max_items])

    def text_map(
        self, key: str, allowed_keys: Collection[str], *, max_chars: int
    ) -> dict[str, str]:
        """``{id: text}`` restricted to ``allowed_keys``; other keys are dropped."""
        value = self.obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidOutput(f"{self._name(key)}: expected an object")
        out: dict[str, str] = {}
        for k, v in list(value.items())[: len(allowed_keys) * 2]:
            if k in allowed_keys:
                text = clean_text(v, max_chars=max_chars, field=f"{self._name(key)}.{k}")
                self.guard.check(text, field=self._name(key))
                if text:
                    out[k] = text
        return out

    def scalar_map(self, key: str, *, max_items: int, max_chars: int) -> dict[str, str]:
        """A small object of constraints, values flattened to capped text."""
        value = self.obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidOutput(f"{self._name(key)}: expected an object")
        out: dict[str, str] = {}
        for k, v in list(value.items())[:max_items]:
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                continue
            name = clean_text(str(k), max_chars=40, field=self._name(key))
            text = clean_text(str(v), max_chars=max_chars, field=f"{self._name(key)}.{name}")
            self.guard.check(name + " " + text, field=self._name(key), claims=False)
            if name and text:
                out[name] = text
        return out

    def sub(self, key: str) -> Fields:
        return Fields(self.obj.get(key), self.guard, where=self._name(key))


def ids_of(items: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(str(i["id"]) for i in items)
