"""Grounding of model free text: it may only name what the call gave the model.

An explanation or a reason may name an item (by id or title) only when that
item is in the call's data: its candidates, its evidence, the item explained,
the user's own history. Another user's id never passes. Claims of the kind a
model invents (awards, box office, ratings and audience figures) must be
backed by the catalog data of the call, not by the user's free text (which
is where an injection would put them).

Use :func:`check_grounded` for one text, or build a :class:`Grounding` once
per call (``Grounding.from_data(data)`` walks a role's fenced data) and call
:meth:`Grounding.check` for every text field. Both raise
:class:`~workers.llm.errors.UnsafeOutput` with a reason that never quotes
the text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from workers.llm.errors import UnsafeOutput
from workers.llm.normalize import normalize

__all__ = ["Grounding", "check_grounded"]

# Someone's account: "user 4411", "uid: 93", "u_1234", "customer #77", "@dana_k".
USER_REF: Final = re.compile(
    r"\b(?:user|usr|uid|customer|member|account|profile|subscriber|viewer)\s*"
    r"(?:id|no\.?|number)?\s*[#:_\-]?\s*\d+\b"
    r"|\bu[#:_\-]?\d{2,}\b"
    r"|(?<![\w.])@[a-z_][\w.]{2,}",
    re.IGNORECASE,
)
# A token shaped like a catalog id: "i99", "tt0111161", "sku-1234", "item 42", "83321".
ID_SHAPE: Final = re.compile(
    r"\b(?:item|itm|movie|film|product|sku|asin|isbn)\s*[#:_\-]\s*\w+\b"
    r"|\b(?:item|itm|sku|asin)\s+\d+\b"
    r"|\b(?!pg-13\b|nc-17\b|mp[34]\b)[a-z]{1,3}[\-_:]?\d{1,12}\b"
    r"|(?<![\d.,])\d{5,}(?![\d.,])",
    re.IGNORECASE,
)
# (claim, what in the catalog data backs it)
CLAIMS: Final = tuple(
    (re.compile(claim, re.IGNORECASE), re.compile(backing, re.IGNORECASE))
    for claim, backing in (
        (r"\b(?:oscars?|academy awards?)\b", r"\b(?:oscar|academy award)"),
        (r"\bgolden globes?\b", r"\bgolden globe"),
        (
            r"\b(?:emmys?|baftas?|grammys?|tony awards?|c[ée]sars?|goyas?)\b",
            r"\b(?:emmy|bafta|grammy|tony|c[ée]sar|goya)",
        ),
        (
            r"\b(?:palme d['’]or|golden (?:lion|bear)|cannes|sundance|berlinale)\b",
            r"\b(?:palme|golden|cannes|sundance|berlinale)",
        ),
        (
            r"\baward[\s\-]?winning\b|\bwon\b.{0,40}\bawards?\b|\bawards?\b",
            r"\baward|\bwon\b|\bwinner",
        ),
        (r"\bnominat\w*\b", r"\bnominat"),
        (
            r"\bbox[\s\-]office\b|\bhighest[\s\-]grossing\b|\bgross(?:ed|ing)?\b|\bblockbuster\b",
            r"\bbox[\s\-]office|\bgross|\bblockbuster",
        ),
        (
            r"\bbest[\s\-]?sell\w*\b|\bnumber one\b|#\s?1\b|\bchart[\s\-]topping\b",
            r"\bbest[\s\-]?sell|\bnumber one|#\s?1\b|\bchart",
        ),
        (
            r"\bcritically acclaimed\b|\bmasterpiece\b|\bcult classic\b",
            r"\bacclaim|\bmasterpiece|\bcult",
        ),
        (
            r"\b(?:rotten tomatoes|imdb|metacritic|letterboxd)\b",
            r"\b(?:rotten|imdb|metacritic|letterboxd)",
        ),
        (
            r"\bbased on (?:a|the) true story\b|\btrue story\b",
            r"\btrue story|\breal events|\bbased on",
        ),
        (r"\bdirected by\b|\bdirector\b", r"\bdirect"),
        (r"\bstarring\b|\bstars\s+[A-Z]", r"\bstar|\bcast"),
    )
)
# Figures a model invents: ratings, percentages, audience and money counts.
STATISTIC: Final = re.compile(
    r"(?:\b(?:rated|rating|score[ds]?|scoring|imdb|tomatometer)\s*(?:of\s*|at\s*)?)"
    r"(?P<a>\d+(?:[.,]\d+)*)"
    r"|(?P<b>\d+(?:[.,]\d+)*)\s*(?:%|percent\b|/\s*10\b|/\s*5\b|/\s*100\b|out of\s*\d+|stars?\b|"
    r"million\b|billion\b|m\b|bn\b|k\b|users\b|viewers\b|people\b|votes\b|views\b|reviews\b|"
    r"times\b|fans\b|subscribers\b|downloads\b|copies\b)",
    re.IGNORECASE,
)
_WS: Final = re.compile(r"\s+")

# Keys of a role's data whose strings are the user's own words, not catalog data.
_USER_TEXT_KEYS: Final = frozenset({"request", "dialogue", "message", "current", "preferences"})


def _norm(text: str) -> str:
    return normalize(text).casefold()


@dataclass(frozen=True)
class Grounding:
    """What one call's free text may name.

    ``allowed_ids`` / ``allowed_titles``: items in the call's data (candidates,
    evidence, the item, the user's own history) and the user's own id.
    ``known_ids`` / ``known_titles``: ids and titles the caller knows to exist
    (the catalog, other users); naming one that is not allowed is a violation.
    ``catalog_text``: the catalog data of the call (descriptions, attributes,
    facts, signals), which backs claims, figures and id-shaped tokens. The
    user's own words back nothing: that is where an injection would put it.
    """

    allowed_ids: frozenset[str]
    allowed_titles: frozenset[str] = frozenset()
    known_ids: frozenset[str] = frozenset()
    known_titles: frozenset[str] = frozenset()
    catalog_text: str = ""

    @classmethod
    def build(
        cls,
        *,
        allowed_ids: Iterable[str],
        allowed_titles: Iterable[str] = (),
        known_ids: Iterable[str] = (),
        known_titles: Iterable[str] = (),
        catalog_text: str = "",
    ) -> Grounding:
        """A :class:`Grounding` with every id and title normalised once."""
        return cls(
            allowed_ids=frozenset(_norm(i) for i in allowed_ids if i),
            allowed_titles=frozenset(t for t in (_norm(t) for t in allowed_titles) if t),
            known_ids=frozenset(_norm(i) for i in known_ids if i),
            known_titles=frozenset(t for t in (_norm(t) for t in known_titles) if t),
            catalog_text=_norm(catalog_text),
        )

    @classmethod
    def from_data(
        cls,
        data: Mapping[str, Any],
        *,
        known_ids: Iterable[str] = (),
        known_titles: Iterable[str] = (),
        user_id: str = "",
    ) -> Grounding:
        """The grounding of a role's (fenced) data: every item in it is allowed."""
        ids: list[str] = [user_id] if user_id else []
        titles: list[str] = []
        catalog: list[str] = []
        _walk(data, ids, titles, catalog, in_user_text=False)
        return cls.build(
            allowed_ids=ids,
            allowed_titles=titles,
            known_ids=known_ids,
            known_titles=known_titles,
            catalog_text="\n".join(catalog),
        )

    def check(self, text: str, *, field: str = "output", claims: bool = True) -> None:
        """Raise :class:`UnsafeOutput` if ``text`` names what the call did not give.

        ``claims=False`` for tags and constraint values: ids and users are
        still checked, claims and figures are not.
        """
        norm = _norm(text)
        if not norm:
            return
        allowed = self.allowed_ids
        for m in USER_REF.finditer(norm):
            if m.group(0) not in allowed:
                raise UnsafeOutput(f"{field}: names a user who is not this user")
        for m in ID_SHAPE.finditer(norm):
            token = m.group(0)
            if token in allowed or self._in_data(token):
                continue
            raise UnsafeOutput(f"{field}: names an id that is not in this call's data")
        for known in self.known_ids - allowed:
            if _contains(norm, known):
                raise UnsafeOutput(f"{field}: names an id that is not in this call's data")
        for title in self.known_titles - self.allowed_titles:
            if _contains(norm, title):
                raise UnsafeOutput(f"{field}: names a title that is not in this call's data")
        if not claims:
            return
        for claim, backing in CLAIMS:
            if claim.search(norm) and not backing.search(self.catalog_text):
                raise UnsafeOutput(f"{field}: a claim the catalog data does not back")
        for m in STATISTIC.finditer(norm):
            # the figure with its unit ("2 million", "rated 9.8"): a bare "2"
            # in the catalog backs nothing
            if not _contains(self.catalog_text, _WS.sub(" ", m.group(0)).strip()):
                raise UnsafeOutput(f"{field}: a figure the catalog data does not back")

    def _in_data(self, token: str) -> bool:
        return _contains(self.catalog_text, token) or any(
            _contains(t, token) for t in self.allowed_titles
        )


def _contains(haystack: str, needle: str) -> bool:
    if not needle:
        return False
    start = haystack.find(needle)
    while start != -1:
        end = start + len(needle)
        before = haystack[start - 1] if start else " "
        after = haystack[end] if end < len(haystack) else " "
        if not (before.isalnum() or after.isalnum()):
            return True
        start = haystack.find(needle, start + 1)
    return False


def _walk(
    value: Any,
    ids: list[str],
    titles: list[str],
    catalog: list[str],
    *,
    in_user_text: bool,
) -> None:
    if isinstance(value, Mapping):
        if "id" in value and not in_user_text:
            ids.append(str(value["id"]))
            if isinstance(value.get("title"), str):
                titles.append(value["title"])
        for key, v in value.items():
            if key == "id":
                continue
            _walk(v, ids, titles, catalog, in_user_text=in_user_text or key in _USER_TEXT_KEYS)
    elif isinstance(value, list | tuple):
        for v in value:
            _walk(v, ids, titles, catalog, in_user_text=in_user_text)
    elif not in_user_text and isinstance(value, str | int | float) and not isinstance(value, bool):
        catalog.append(str(value))


def check_grounded(
    text: str,
    *,
    allowed_ids: Collection[str],
    allowed_titles: Collection[str] = (),
    known_ids: Collection[str] = (),
    known_titles: Collection[str] = (),
    catalog_text: str = "",
    field: str = "output",
    claims: bool = True,
) -> None:
    """One-shot :meth:`Grounding.check`; build a :class:`Grounding` to check many texts."""
    Grounding.build(
        allowed_ids=allowed_ids,
        allowed_titles=allowed_titles,
        known_ids=known_ids,
        known_titles=known_titles,
        catalog_text=catalog_text,
    ).check(text, field=field, claims=claims)
