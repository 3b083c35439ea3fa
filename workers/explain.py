"""The ``explain`` role: one grounded explanation per recommended item (XRec style).

For each item of a recommendation list it gathers the evidence first — the
user's history items nearest to it in the joint (A-LLMRec) space, the
attributes it shares with those items, its popularity rank — and then writes
the text from that evidence only:

* a grounded template always can; it names nothing but the evidence;
* the LLM may, for the first ``explain_llm_items`` items of lists whose route
  is in ``explain_llm_routes`` (by default the LLM cold-start route), when its
  budget share allows and within the deadline. Its text must pass the
  grounding check (every title or item id it names is the item itself or in
  its evidence; no link, no other user); one that fails is replaced by the
  template.

With ``explain_candidates`` > 1 the LLM writes that many drafts (XRec's
generator) and :func:`best_draft` (XRec's ranker) keeps the most coherent,
then most informative, of those that pass the grounding check.

Each explanation carries its evidence and its source (``llm`` or ``template``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from contracts import Evidence, Explanation, Recommendation, derive_id, topics
from workers import quality
from workers.catalog import CatalogView, ItemRecord, display_title
from workers.llm import LLM, UserContext
from workers.llm.errors import UnsafeOutput
from workers.llm.grounding import check_grounded
from workers.llm.safety import find_link
from workers.llm_items import budgeted, items_of, llm_item
from workers.outputs import Output, OutputStore
from workers.recommend import Scorer
from workers.settings import ServingSettings
from workers.state import UserStateStore

__all__ = [
    "ExplainHandler",
    "GroundingCheck",
    "best_draft",
    "check_grounding",
    "template_text",
]

logger = logging.getLogger(__name__)

# History items cited per explanation: enough to ground, few enough to read.
EVIDENCE_ITEMS: Final = 2
ESTIMATED_TOKENS: Final = 500


@dataclass(frozen=True, slots=True)
class GroundingCheck:
    passed: bool
    problem: str = ""


def check_grounding(
    text: str,
    *,
    allowed_titles: Iterable[str],
    allowed_ids: Iterable[str],
    catalog_titles: Iterable[str],
    evidence: Sequence[Evidence] = (),
) -> GroundingCheck:
    """Whether ``text`` names only what its evidence allows: the LLM library's grounding
    check (workers.llm.grounding: links, ids, other users, unbacked claims, titles of
    the catalog outside the evidence), read as a verdict instead of an exception."""
    allowed = [t for t in allowed_titles if t]
    # Titles as people write them too ("Toy Story" for "Toy Story (1995)"); a one-word
    # title without its year is too often a plain word ("Heat", "Big") to look for.
    allowed += [display_title(t, year=False) for t in allowed]
    known = [t for t in catalog_titles if t]
    known += [n for n in (display_title(t, year=False) for t in known) if len(n.split()) >= 2]
    if find_link(text):
        return GroundingCheck(False, "output: a link")
    # Allowed titles are taken out first: one may contain another title's words
    # ("Star Trek: First Contact" holds "Contact"), which is no violation.
    rest = text
    for title in sorted({*allowed, *(display_title(t) for t in allowed)}, key=len, reverse=True):
        rest = rest.replace(title, " ")
    try:
        check_grounded(
            rest,
            allowed_ids=[i for i in allowed_ids if i],
            allowed_titles=allowed + [display_title(t) for t in allowed],
            known_titles=known,
            # What the evidence states may be claimed (a trending rank, a genre).
            catalog_text=" ".join(_evidence_facts(evidence)),
        )
    except UnsafeOutput as exc:
        return GroundingCheck(False, str(exc))
    return GroundingCheck(True)


def _evidence_facts(evidence: Sequence[Evidence]) -> list[str]:
    facts = []
    for e in evidence:
        if e.kind == "popularity" and e.value:
            facts.append(f"#{e.value} among trending titles right now, popular, trending")
        elif e.value:
            facts.append(f"{e.name or e.kind}: {e.value}")
    return facts


def template_text(item: ItemRecord, evidence: Sequence[Evidence], titles: dict[str, str]) -> str:
    """A sentence built from the evidence alone (so it is grounded by construction)."""
    history = [
        display_title(titles.get(e.item_id, e.item_id))
        for e in evidence
        if e.kind == "history_item" and e.item_id
    ]
    shared = [e.value for e in evidence if e.kind == "attribute" and e.value]
    popular = [e.value for e in evidence if e.kind == "popularity" and e.value]
    stated = [e.value for e in evidence if e.kind == "similar_users" and e.value]
    parts = []
    if history:
        parts.append(f"it is close to {' and '.join(history)}, which you watched")
    if shared:
        parts.append(f"it shares {', '.join(shared[:3])} with them")
    if stated:
        parts.append(f"it matches what you asked for ({stated[0]})")
    if popular:
        parts.append(f"it is #{popular[0]} among trending titles right now")
    if not parts:
        parts.append("it is new in the catalog")
    name = display_title(item.title) if item.title else item.item_id
    text = f"Recommended: {name}, because " + "; ".join(parts) + "."
    return text[:1000]


def best_draft(
    texts: Sequence[str],
    item: ItemRecord,
    evidence: Sequence[Evidence],
    titles: dict[str, str],
) -> str:
    """XRec's explanation ranker over grounded drafts: the most coherent first
    (workers.quality.coherence: names the item, no foreign title, names its
    evidence), then the most informative (aspects of its evidence the text uses),
    then the shortest. One draft is returned as it is."""
    if len(texts) == 1:
        return texts[0]

    def names(title: str) -> list[str]:
        return [n for n in {title, display_title(title), display_title(title, year=False)} if n]

    history = [e.item_id for e in evidence if e.kind == "history_item" and e.item_id]
    terms = {
        "history": [n for i in history for n in names(titles.get(i, ""))],
        "genre": [e.value for e in evidence if e.kind == "attribute" and e.value],
        "popularity": ["trending", "popular"],
    }

    def score(text: str) -> tuple[float, int, int]:
        c = quality.coherence(
            text,
            item_names=names(item.title or item.item_id),
            evidence_names=[names(titles.get(i, "")) for i in history],
            other_titles=(),
        )
        return (c.score, len(quality.text_aspects(text, terms)), -len(text))

    return max(texts, key=score)


class ExplainHandler:
    """Explanations for each recommendation list (see the module docstring)."""

    def __init__(
        self,
        *,
        scorer: Scorer,
        catalog: CatalogView,
        user_state: UserStateStore,
        popular: Any,
        outputs: OutputStore,
        serving: ServingSettings,
        llm: LLM | None,
        budget: Any = None,
    ) -> None:
        self._scorer = scorer
        self._catalog = catalog
        self._user_state = user_state
        self._popular = popular
        self._outputs = outputs
        self._serving = serving
        self._llm = llm
        self._budget = budget
        self._slots = asyncio.Semaphore(serving.llm_concurrency)

    async def __call__(self, recs: Sequence[Recommendation]) -> list[Output]:
        recs = [r for r in recs if r.items]
        if not recs:
            return []
        n_items = self._serving.explain_max_items
        wanted = [
            (
                topics.EXPLANATIONS,
                r.user_id.encode(),
                derive_id("expl", r.rec_id, i.item_id),
            )
            for r in recs
            for i in r.items[:n_items]
        ]
        stored = await self._outputs.get_many(wanted)
        if all(s is not None for s in stored):
            return [s for s in stored if s is not None]
        states = {
            s.user_id: s
            for s in await self._user_state.load(sorted({r.user_id for r in recs}), weights=False)
        }
        done = {w[2] for w, s in zip(wanted, stored, strict=True) if s is not None}
        jobs = []
        for rec in recs:
            history = list(states[rec.user_id].history) if rec.user_id in states else []
            llm_left = (
                self._serving.explain_llm_items
                if self._llm is not None
                and self._serving.llm_explain
                and (rec.route or "") in self._serving.explain_llm_routes
                else 0
            )
            for item in rec.items[:n_items]:
                if derive_id("expl", rec.rec_id, item.item_id) in done:
                    continue
                jobs.append(self._explain(rec, item.item_id, history, use_llm=llm_left > 0))
                llm_left -= 1
        fresh = iter(await self._outputs.put_many(await asyncio.gather(*jobs)))
        return [s if s is not None else next(fresh) for s in stored]

    def _evidence(self, item_id: str, history: Sequence[str]) -> list[Evidence]:
        evidence: list[Evidence] = []
        if history:
            near = self._scorer.similar_many([[item_id]], 50, [()])[0]
            recent = set(history[:50])
            known = self._catalog.items
            cited = [i for i in near if i in recent and i in known][:EVIDENCE_ITEMS]
            evidence += [Evidence("history_item", item_id=i) for i in cited]
            mine = set(self._catalog.tokens(item_id))
            shared: dict[str, None] = {}
            for cited_id in cited:
                for token in self._catalog.tokens(cited_id):
                    if token in mine and token.startswith("genres="):
                        shared.setdefault(token, None)
            evidence += [
                Evidence("attribute", name="genre", value=t.split("=", 1)[1])
                for t in list(shared)[:3]
            ]
        popular = getattr(self._popular, "popular", [])
        if item_id in popular[:100]:
            evidence.append(Evidence("popularity", value=str(popular.index(item_id) + 1)))
        return evidence

    async def _explain(
        self, rec: Recommendation, item_id: str, history: Sequence[str], *, use_llm: bool
    ) -> Output:
        record = self._catalog.items.get(item_id) or ItemRecord(item_id, item_id, {}, False)
        evidence = self._evidence(item_id, history)
        titles = {
            e.item_id: (self._catalog.items[e.item_id].title or e.item_id)
            for e in evidence
            if e.item_id and e.item_id in self._catalog.items
        }
        text, source = template_text(record, evidence, titles), "template"
        if use_llm:
            written = await self._llm_text(rec, record, evidence, titles)
            if written is not None:
                text, source = written, "llm"
        explanation = Explanation(
            explanation_id=derive_id("expl", rec.rec_id, item_id),
            rec_id=rec.rec_id,
            user_id=rec.user_id,
            item_id=item_id,
            text=text,
            evidence=tuple(evidence),
            source=source,  # type: ignore[arg-type]
            ts_ms=int(time.time() * 1000),
        )
        return Output(topics.EXPLANATIONS, rec.user_id.encode(), explanation)

    async def _llm_text(
        self,
        rec: Recommendation,
        record: ItemRecord,
        evidence: Sequence[Evidence],
        titles: dict[str, str],
    ) -> str | None:
        llm = self._llm
        assert llm is not None
        cited = items_of(self._catalog, [e.item_id for e in evidence if e.item_id])
        drafts = self._serving.explain_candidates
        deadline = self._serving.explain_deadline_ms / 1000

        async def generate() -> list[str]:
            # XRec: the generator writes several drafts at once, the ranker below picks.
            outcomes = await asyncio.gather(
                *(
                    llm.explain(
                        UserContext(history=cited),
                        llm_item(record),
                        cited,
                        deadline=deadline,
                        variant=n,
                    )
                    for n in range(drafts)
                ),
                return_exceptions=True,
            )
            texts = [o.text for o in outcomes if not isinstance(o, BaseException)]
            if not texts:
                raise next(o for o in outcomes if isinstance(o, BaseException))
            return texts

        texts, _ = await budgeted(
            generate,
            what=f"explain {rec.rec_id}",
            budget=self._budget,
            slots=self._slots,
            estimate=ESTIMATED_TOKENS * drafts,
            path="explain",
        )
        if not texts:
            return None
        catalog_titles = [r.title for r in self._catalog.items.values() if r.title]
        passed = []
        for text in texts:
            check = check_grounding(
                text,
                allowed_titles=[record.title, *titles.values()],
                allowed_ids=[record.item_id, *titles],
                catalog_titles=catalog_titles,
                evidence=evidence,
            )
            if check.passed:
                passed.append(text)
            else:
                logger.info("explain %s: LLM text failed grounding (%s)", rec.rec_id, check.problem)
        if not passed:
            return None
        return best_draft(passed, record, evidence, titles)
