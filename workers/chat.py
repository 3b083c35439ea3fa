"""The ``chat`` role: conversational recommendation (Chat-Rec / ChatCRS).

Per session, dialogue state lives in Redis with a TTL: the ChatCRS state
(greeting, preference_elicitation, recommendation_presentation,
clarification, exploration, feedback), the last turns, the preferences
extracted so far, what was shown, and when a recommendation was accepted.

Each message:

1. is read by cheap rules (always): genres and their negations, item
   mentions resolved against the catalog by title, feedback ("not X",
   "more like Y", "none of these", "great, thanks");
2. goes to the LLM's preference extractor only when the policy finds it
   complex and an LLM is configured (within a deadline; the rules' reading
   stands otherwise);
3. updates the preferences: disliked items join the user's profile, so no
   path lists them again; liked items and genres shape the next list;
4. gets a list: the stated preferences' text vector in the joint space is
   blended into scoring (with the model's scores for users who have history),
   liked items seed neighbours, disliked genres are filtered;
5. gets a reply that claims only what is true: history is cited only for a
   user who has one, preferences only as the user stated them.

A redelivered message re-emits its stored reply and leaves the session as it
was (the session remembers the message ids it applied).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson
from redis.exceptions import RedisError

from contracts import ChatMessage, ChatReply, RankedItem, derive_id, topics
from workers.catalog import CatalogView, display_title
from workers.llm import LLM, Preferences, Turn
from workers.llm.pii import redact
from workers.llm_items import budgeted, items_of
from workers.outputs import Output, OutputStore
from workers.policy import PolicySettings, chat_complexity, decide
from workers.recommend import Scorer
from workers.resources import RedisResource, state_store_error
from workers.settings import ServingSettings
from workers.state import UserState, UserStateStore

__all__ = ["ChatHandler", "Reading", "Session", "genre_named", "read_message"]

logger = logging.getLogger(__name__)

REPLY_ITEMS: Final = 5
TURNS_KEPT: Final = 8
APPLIED_KEPT: Final = 64
ESTIMATED_TOKENS: Final = 700

# Words people use for MovieLens genres (the catalog's genre vocabulary).
GENRE_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "Action": ("action",),
    "Adventure": ("adventure", "adventures"),
    "Animation": ("animation", "animated", "cartoon", "cartoons", "anime"),
    "Children's": ("children", "children's", "kids", "family"),
    "Comedy": ("comedy", "comedies", "funny", "humor", "humour", "laugh"),
    "Crime": ("crime", "heist", "gangster", "gangsters"),
    "Documentary": ("documentary", "documentaries"),
    "Drama": ("drama", "dramas", "dramatic"),
    "Fantasy": ("fantasy",),
    "Film-Noir": ("noir", "film-noir"),
    "Horror": ("horror", "scary", "slasher"),
    "Musical": ("musical", "musicals"),
    "Mystery": ("mystery", "mysteries", "whodunit"),
    "Romance": ("romance", "romantic", "love story"),
    "Sci-Fi": ("sci-fi", "scifi", "science fiction", "space"),
    "Thriller": ("thriller", "thrillers", "suspense"),
    "War": ("war",),
    "Western": ("western", "westerns", "cowboy", "cowboys"),
}
_NEGATORS: Final = re.compile(
    r"\b(not|no|never|without|don'?t like|do not like|dislike|hate|no more|avoid|except|"
    r"nothing|didn'?t like|did not like|not into)\b"
)
_MORE_LIKE: Final = re.compile(r"\b(more like|similar to|like|loved|enjoyed|liked)\b")
_ACCEPT: Final = re.compile(
    r"\b(perfect|great|thanks|thank you|sounds good|i'?ll watch|i will watch|love it|"
    r"that one|yes|awesome)\b"
)
_REJECT_ALL: Final = re.compile(r"\b(none of (these|those|them)|something else|other options?)\b")
_GREETING: Final = re.compile(r"^\s*(hi|hello|hey|good (morning|evening|afternoon))\b")
_QUESTION: Final = re.compile(r"\b(why|how come|what makes)\b")


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def _short_title(title: str) -> str:
    return _norm(display_title(title, year=False))


@dataclass
class Session:
    """A chat session's dialogue state (JSON in Redis, with a TTL)."""

    state: str = "greeting"
    turns: list[dict[str, str]] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)
    avoid_genres: list[str] = field(default_factory=list)
    liked_items: list[str] = field(default_factory=list)
    disliked_items: list[str] = field(default_factory=list)
    query: str = ""
    shown: list[str] = field(default_factory=list)
    turn_no: int = 0
    first_accept_turn: int | None = None
    applied: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Session:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class Reading:
    """What rules read in one message."""

    genres: tuple[str, ...] = ()
    avoid_genres: tuple[str, ...] = ()
    liked_items: tuple[str, ...] = ()
    disliked_items: tuple[str, ...] = ()
    accept: bool = False
    reject_shown: bool = False
    greeting: bool = False
    question: bool = False

    @property
    def says_something(self) -> bool:
        return bool(self.genres or self.avoid_genres or self.liked_items or self.disliked_items)


def genre_named(word: str) -> str | None:
    """The catalog genre a word names ('comedies' -> 'Comedy'), or None."""
    w = _norm(word)
    for genre, words in GENRE_WORDS.items():
        if w == genre.casefold() or w in words:
            return genre
    return None


def _negated(text: str, start: int) -> bool:
    """Whether a negation governs the words at ``start`` (same clause, within 5 words)."""
    clause = re.split(r"[,.;!?]|\bbut\b", text[:start])[-1]
    words = clause.split()[-6:]
    return bool(_NEGATORS.search(" ".join(words)))


def read_message(text: str, titles: dict[str, str]) -> Reading:
    """Rules' reading of a message; ``titles`` maps short normalised titles to item ids."""
    norm = _norm(text)
    genres: list[str] = []
    avoid: list[str] = []
    for genre, words in GENRE_WORDS.items():
        for word in words:
            for m in re.finditer(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", norm):
                (avoid if _negated(norm, m.start()) else genres).append(genre)
    liked: list[str] = []
    disliked: list[str] = []
    for short, item_id in titles.items():
        if len(short) < 4:
            continue
        for m in re.finditer(r"(?<!\w)" + re.escape(short) + r"(?!\w)", norm):
            (disliked if _negated(norm, m.start()) else liked).append(item_id)
    return Reading(
        genres=tuple(dict.fromkeys(g for g in genres if g not in avoid)),
        avoid_genres=tuple(dict.fromkeys(avoid)),
        liked_items=tuple(dict.fromkeys(i for i in liked if i not in disliked)),
        disliked_items=tuple(dict.fromkeys(disliked)),
        accept=bool(_ACCEPT.search(norm)) and not _NEGATORS.search(norm),
        reject_shown=bool(_REJECT_ALL.search(norm)),
        greeting=bool(_GREETING.search(norm)),
        question=bool(_QUESTION.search(norm)),
    )


class ChatHandler:
    """Chat turns in, replies out (see the module docstring)."""

    def __init__(
        self,
        *,
        redis: RedisResource,
        scorer: Scorer,
        catalog: CatalogView,
        user_state: UserStateStore,
        popular: Any,
        outputs: OutputStore,
        serving: ServingSettings,
        policy: PolicySettings,
        llm: LLM | None,
        budget: Any = None,
    ) -> None:
        self._redis = redis
        self._scorer = scorer
        self._catalog = catalog
        self._user_state = user_state
        self._popular = popular
        self._outputs = outputs
        self._serving = serving
        self._policy = policy
        self._llm = llm
        self._budget = budget
        self._slots = asyncio.Semaphore(serving.llm_concurrency)
        self._titles: dict[str, str] = {}
        self._titles_for = -1

    def _session_key(self, session_id: str) -> str:
        return self._redis.key("chat", "{" + session_id + "}")

    def _title_index(self) -> dict[str, str]:
        if self._titles_for != len(self._catalog.items):
            index: dict[str, str] = {}
            for record in self._catalog.items.values():
                if record.title and not record.deleted:
                    index.setdefault(_short_title(record.title), record.item_id)
            self._titles, self._titles_for = index, len(self._catalog.items)
        return self._titles

    async def __call__(self, messages: Sequence[ChatMessage]) -> list[Output]:
        by_session: dict[str, list[ChatMessage]] = defaultdict(list)
        for m in messages:
            by_session[m.session_id].append(m)
        # Sessions in parallel (bounded by the LLM slots); turns of one session in order.
        sessions = list(by_session.values())
        results = await asyncio.gather(*(self._session(ms) for ms in sessions))
        replies = {
            m.event_id: o
            for ms, outs in zip(sessions, results, strict=True)
            for m, o in zip(ms, outs, strict=True)
        }
        return [replies[m.event_id] for m in messages]

    async def _session(self, messages: list[ChatMessage]) -> list[Output]:
        out = []
        for message in messages:
            out.append(await self._turn(message))
        return out

    async def _turn(self, message: ChatMessage) -> Output:
        started = time.perf_counter()
        key = message.session_id.encode()
        reply_id = derive_id("reply", message.event_id)
        try:
            raw = await self._redis.client.get(self._session_key(message.session_id))
        except RedisError as exc:
            raise state_store_error("chat session read failed", exc) from exc
        session = Session.from_json(raw)
        if message.event_id in session.applied:
            [stored] = await self._outputs.get_many([(topics.CHAT_REPLIES, key, reply_id)])
            if stored is not None:
                return stored
        [state] = await self._user_state.load([message.user_id], weights=False)
        reading = read_message(message.text, self._title_index())
        complexity = chat_complexity(message.text)
        decision = decide(
            "chat",
            interactions=state.interactions,
            history_len=len(state.history),
            query=message.text,
            settings=self._policy,
            chat=complexity,
        )
        session.turn_no += 1
        # The session (Redis, and the LLM's dialogue context) keeps the turn with
        # personal data redacted; the rules above read the message as sent.
        said = redact(message.text)[:500]
        session.turns = [*session.turns, {"role": "user", "text": said}][-TURNS_KEPT:]
        reasons = [decision.reason]
        source = "template"
        llm_prefs: Preferences | None = None
        if decision.route == "chat_llm" and self._llm is not None:
            llm_prefs, why = await self._extract(session, message)
            if llm_prefs is None:
                reasons.append(f"{why}: rules read the message")
            else:
                source = "llm"
        self._update(session, reading, llm_prefs)
        if reading.disliked_items or (reading.reject_shown and session.shown):
            await self._remember_dislikes(message.user_id, session, reading)
        if reading.accept and session.shown and session.first_accept_turn is None:
            session.first_accept_turn = session.turn_no
        items = await self._recommend(session, state, reading)
        session.state = _next_state(session, reading, items)
        text = _reply_text(session, state, reading, items, self._catalog)
        if source != "llm":
            source = "model" if items else "template"
        session.shown = [i.item_id for i in items]
        session.turns = [*session.turns, {"role": "assistant", "text": text[:500]}][-TURNS_KEPT:]
        session.applied = [*session.applied, message.event_id][-APPLIED_KEPT:]
        reply = ChatReply(
            reply_id=reply_id,
            session_id=message.session_id,
            user_id=message.user_id,
            in_reply_to=message.event_id,
            text=text[:4000],
            items=tuple(items),
            source=source,  # type: ignore[arg-type]
            ts_ms=int(time.time() * 1000),
            intent=_intent(reading),
            reason="; ".join(reasons)[:300],
            state=session.state,
        )
        [emitted] = await self._outputs.put_many([Output(topics.CHAT_REPLIES, key, reply)])
        try:
            await self._redis.client.set(
                self._session_key(message.session_id),
                session.to_json(),
                ex=self._serving.chat_session_ttl_s,
            )
        except RedisError as exc:
            raise state_store_error("chat session write failed", exc) from exc
        logger.debug(
            "chat turn %s in %.1f ms", message.event_id, (time.perf_counter() - started) * 1000
        )
        return emitted

    async def _extract(
        self, session: Session, message: ChatMessage
    ) -> tuple[Preferences | None, str]:
        llm = self._llm
        assert llm is not None
        current = Preferences(
            genres=tuple(session.genres),
            dislikes=tuple(session.avoid_genres),
            liked_items=tuple(session.liked_items),
            disliked_items=tuple(session.disliked_items),
        )
        mentioned = items_of(self._catalog, [*session.shown, *session.liked_items][:10])
        result, why = await budgeted(
            lambda: llm.extract_preferences(
                [Turn(t["role"], t["text"]) for t in session.turns],
                deadline=self._serving.chat_deadline_ms / 1000,
                current=current,
                mentioned_items=mentioned,
            ),
            what=f"chat {message.event_id}",
            budget=self._budget,
            slots=self._slots,
            estimate=ESTIMATED_TOKENS,
            path="chat",
        )
        return result, why or ""

    def _update(self, session: Session, reading: Reading, prefs: Preferences | None) -> None:
        genres = list(reading.genres)
        avoid = list(reading.avoid_genres)
        liked = list(reading.liked_items)
        disliked = list(reading.disliked_items)
        if prefs is not None:  # the LLM's reading, validated against what exists
            genres += [g for g in map(genre_named, prefs.genres) if g]
            avoid += [g for g in map(genre_named, prefs.dislikes) if g]
            liked += [i for i in prefs.liked_items if i in self._catalog.items]
            disliked += [i for i in prefs.disliked_items if i in self._catalog.items]
        if reading.reject_shown:
            disliked += session.shown
        session.avoid_genres = _merge(session.avoid_genres, avoid, drop=genres)
        session.genres = _merge(session.genres, genres, drop=session.avoid_genres)
        session.disliked_items = _merge(session.disliked_items, disliked, drop=liked)
        session.liked_items = _merge(session.liked_items, liked, drop=session.disliked_items)
        # The stated preferences as text for the joint space; liked items act as
        # neighbour seeds instead (their embedding says more than their title).
        session.query = " ".join(g.lower() for g in session.genres)[:500]

    async def _remember_dislikes(self, user_id: str, session: Session, reading: Reading) -> None:
        """Disliked items join the user's profile: no path lists them again."""
        if not session.disliked_items:
            return
        try:
            await self._redis.client.sadd(
                self._user_state.disliked_key(user_id), *session.disliked_items
            )
        except RedisError as exc:
            raise state_store_error("profile write failed", exc) from exc

    async def _recommend(
        self, session: Session, state: UserState, reading: Reading
    ) -> list[RankedItem]:
        if reading.greeting and not reading.says_something and not state.history:
            return []  # a greeting from someone we know nothing about: ask first
        excluded = set(state.excluded) | set(session.disliked_items) | self._catalog.deleted
        excluded |= set(session.liked_items)
        scores: dict[str, float] = defaultdict(float)
        sources: dict[str, str] = {}
        if session.query:
            [near] = await self._scorer.similar_to_texts([session.query], 100, [excluded])
            for item_id, cos in near:
                scores[item_id] += cos
                sources.setdefault(item_id, "stated")
        seeds = [*session.liked_items, *state.history[:5]]
        if seeds:
            near_ids = self._scorer.similar_many([seeds], 100, [excluded])[0]
            n = max(len(near_ids), 1)
            for r, item_id in enumerate(near_ids):
                # Items the user named weigh most; their history after.
                scores[item_id] += (1.0 if session.liked_items else 0.5) * (1.0 - r / n)
                sources.setdefault(item_id, "similar")
        popular = getattr(self._popular, "popular", [])
        for r, item_id in enumerate(popular[:100]):
            if item_id not in excluded:
                scores[item_id] += 0.2 * (1.0 - r / 100)
                sources.setdefault(item_id, "popular")
        if state.history and scores:
            ids = list(scores)
            [model] = await self._scorer.score([list(reversed(state.history))], [ids])
            m = np.asarray(model, dtype=np.float64)
            ok = m > -1e8
            if ok.any():
                z = (m - m[ok].mean()) / (m[ok].std() or 1.0)
                for item_id, value, good in zip(ids, z, ok, strict=True):
                    if good:
                        scores[item_id] += 0.3 * float(value)
        wanted, avoid = set(session.genres), set(session.avoid_genres)
        ranked = []
        for item_id, score in scores.items():
            if item_id in excluded:
                continue
            genres = {
                t.split("=", 1)[1] for t in self._catalog.tokens(item_id) if t.startswith("genres=")
            }
            if genres & avoid:
                continue
            ranked.append((score + 0.5 * len(genres & wanted), item_id))
        ranked.sort(key=lambda x: (-x[0], x[1]))
        return [
            RankedItem(item_id, round(score, 6), r + 1, sources.get(item_id))
            for r, (score, item_id) in enumerate(ranked[:REPLY_ITEMS])
        ]


def _merge(current: list[str], new: Sequence[str], *, drop: Sequence[str] = ()) -> list[str]:
    out = [x for x in current if x not in drop]
    out += [x for x in new if x not in out and x not in drop]
    return out[-50:]


def _intent(reading: Reading) -> str:
    if reading.accept:
        return "feedback"
    if reading.question:
        return "ask_question"
    if reading.says_something or reading.reject_shown:
        return "refine_preference"
    return "request_recommendation"


def _next_state(session: Session, reading: Reading, items: Sequence[RankedItem]) -> str:
    if reading.accept:
        return "feedback"
    if reading.question:
        return "exploration"
    if not items:
        return "preference_elicitation"
    if reading.disliked_items or reading.reject_shown:
        return (
            "clarification"
            if not session.genres and not session.liked_items
            else "recommendation_presentation"
        )
    return "recommendation_presentation"


def _reply_text(
    session: Session,
    state: UserState,
    reading: Reading,
    items: Sequence[RankedItem],
    catalog: CatalogView,
) -> str:
    """What the assistant says: only what is true of this user and this list."""

    def title(item_id: str) -> str:
        record = catalog.items.get(item_id)
        return record.title if record and record.title else item_id

    if reading.accept and not items:
        return "Glad that works. Ask me any time for more."
    if not items:
        return (
            "Hi! What are you in the mood for? Tell me a genre, or a title you liked "
            "(or one you did not)."
        )
    grounds = []
    if state.history:
        grounds.append(f"the {state.interactions} titles in your history")
    if session.genres:
        grounds.append("your interest in " + ", ".join(session.genres[:3]))
    if session.liked_items:
        grounds.append("your liking " + ", ".join(title(i) for i in session.liked_items[:2]))
    lead = "Based on " + " and ".join(grounds) if grounds else "Here are popular picks to start"
    notes = []
    if session.avoid_genres:
        notes.append("leaving out " + ", ".join(session.avoid_genres[:3]))
    if session.disliked_items:
        notes.append("skipping titles you turned down")
    tail = f" ({'; '.join(notes)})" if notes else ""
    listed = "; ".join(title(i.item_id) for i in items)
    prefix = "Glad you liked it. " if reading.accept else ""
    return f"{prefix}{lead}{tail}: {listed}."
