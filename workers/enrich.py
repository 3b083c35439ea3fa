"""The ``enrich`` role: the LLM as feature enhancer for items with thin text.

For a catalog upsert whose text gives the model little to embed (no
description, few attributes), the LLM extracts structured features (genres,
themes, mood, audience, keywords). They are validated by the role helper
(fields, lengths, plain text), cached by the pool (same item text, same
prompt), and attached to that version of the item in the catalog store; every
process's catalog view then reloads the item, and the scorer re-embeds its
text with the features (A-LLMRec's text path), so the enriched embedding is
what serving uses. Items the model was trained on keep their collaborative
embedding, so they are never sent: only items known from text alone are
enriched (selective use: one call per new item version, cached).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from contracts import CatalogChange
from workers.catalog import CatalogStore
from workers.llm import LLM, Item
from workers.llm_items import budgeted
from workers.outputs import Output
from workers.recommend import Scorer
from workers.settings import ServingSettings

__all__ = ["EnrichHandler", "is_thin"]

logger = logging.getLogger(__name__)

ESTIMATED_TOKENS = 400
# Fewer words than this in title + description + attributes is "thin".
THIN_WORDS = 25


def is_thin(change: CatalogChange) -> bool:
    """Whether an upsert's text is too thin to embed well."""
    if change.op != "upsert":
        return False
    words = len((change.title or "").split()) + len((change.description or "").split())
    for value in (change.attributes or {}).values():
        words += len(value) if isinstance(value, list | tuple) else 1
    return words < THIN_WORDS


class EnrichHandler:
    """Catalog upserts in; features attached to the catalog (no output events)."""

    def __init__(
        self,
        *,
        store: CatalogStore,
        scorer: Scorer,
        serving: ServingSettings,
        llm: LLM | None,
        budget: Any = None,
    ) -> None:
        self._store = store
        self._scorer = scorer
        self._serving = serving
        self._llm = llm
        self._budget = budget
        self._slots = asyncio.Semaphore(serving.llm_concurrency)
        self.enriched = 0
        self.skipped = 0

    async def __call__(self, changes: Sequence[CatalogChange]) -> list[Output]:
        latest: dict[str, CatalogChange] = {}
        for change in changes:
            if change.item_id not in latest or change.ts_ms >= latest[change.item_id].ts_ms:
                latest[change.item_id] = change
        thin = [c for c in latest.values() if is_thin(c) and not self._scorer.is_trained(c.item_id)]
        if self._llm is None or not thin:
            self.skipped += len(thin)
            return []
        await asyncio.gather(*(self._enrich(c) for c in thin))
        return []

    async def _enrich(self, change: CatalogChange) -> None:
        llm = self._llm
        assert llm is not None
        attributes = {
            k: ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
            for k, v in (change.attributes or {}).items()
        }
        item = Item(
            change.item_id, change.title or change.item_id, change.description or "", attributes
        )
        features, why = await budgeted(
            lambda: llm.extract_features(item, deadline=self._serving.explain_deadline_ms / 1000),
            what=f"enrich {change.item_id}",
            budget=self._budget,
            slots=self._slots,
            estimate=ESTIMATED_TOKENS,
            path="enrichment",
        )
        if features is None:
            logger.info("enrich %s: skipped (%s)", change.item_id, why)
            self.skipped += 1
            return
        values = {
            "genres": list(features.genres),
            "themes": list(features.themes),
            "mood": list(features.mood),
            "audience": features.target_audience,
            "keywords": list(features.keywords),
        }
        values = {k: v for k, v in values.items() if v}
        if values and await self._store.enrich(change.item_id, change.ts_ms, values):
            self.enriched += 1
