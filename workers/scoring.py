"""The model as the pipeline sees it: raw ids in, scores and neighbours out.

Wraps :class:`workers.model.Scorer` (onnxruntime, its own thread) into the
:class:`workers.recommend.Scorer` protocol: ragged candidate lists, chronological
raw-id histories, nearest neighbours in the joint (A-LLMRec) space, and new
catalog items added from their text.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from workers.model import Scorer
from workers.model.settings import ModelSettings
from workers.resources import Resource

__all__ = ["ModelScorer"]

logger = logging.getLogger(__name__)

# Items the model cannot score yet (a catalog item not yet added) rank last;
# finite, because JSON has no infinity.
_UNKNOWN_SCORE = -1e9


class ModelScorer(Resource):
    """The ONNX model adapted to the recommendation logic; a :class:`Resource`
    (``async with ModelScorer(settings)`` loads the model directory)."""

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__()
        self._settings = settings
        self._trained_rows = 0
        self._unit: npt.NDArray[np.float32] | None = None
        self._raw_ids: list[str] = []
        self._unit_rows = 0
        # Text of each item added at run time, to notice when it changes.
        self._texts: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ModelScorer(state={self.state.value}, model_dir={str(self._settings.model_dir)!r})"

    async def _open(self) -> None:
        self._scorer = await Scorer(self._settings).open()
        # Rows past the trained ones are added at run time from text alone.
        self._trained_rows = self._scorer.n_items

    async def _close(self) -> None:
        await self._scorer.aclose()

    @property
    def version(self) -> str:
        return self._scorer.version

    @property
    def provider(self) -> str:
        return self._scorer.provider

    def _unit_vectors(self) -> npt.NDArray[np.float32]:
        """L2-normalised joint vectors (the manifest's first ``similarity_dim`` columns:
        no bias column, no ID half of the pair), cached until items grow."""
        if self._unit is None or self._unit_rows != self._scorer.n_items + 1:
            # Items are appended on the scorer's thread (vectors first, then ids), so
            # the two may differ by a few rows here: keep the rows both have.
            vectors = self._scorer.item_vectors()
            rows = min(vectors.shape[0], self._scorer.n_items + 1)
            self._raw_ids = [self._scorer.raw_id(r) for r in range(rows)]
            vectors = vectors[:rows]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            self._unit = (vectors / norms).astype(np.float32)
            self._unit_rows = vectors.shape[0]
        return self._unit

    def similar(self, item_ids: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[str]:
        """Items closest (cosine, summed over seeds) to ``item_ids`` in the joint space,
        leaving out the seeds and ``exclude``."""
        return self.similar_many([item_ids], k, [exclude])[0]

    def similar_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[list[str]]:
        """:meth:`similar` for many users at once: one (users x items) matrix product."""
        if not seed_lists or k <= 0:
            return [[] for _ in seed_lists]
        unit = self._unit_vectors()
        known = unit.shape[0]

        def row(item: str) -> int:
            # An item added on the scorer's thread after ``unit`` was taken has a row
            # past it: not a neighbour (nor an exclusion) yet; the next call has it.
            r = self._scorer.row(item)
            return r if r < known else 0

        seeds = [[r for r in (row(i) for i in items) if r] for items in seed_lists]
        queries = np.zeros((len(seeds), unit.shape[1]), dtype=np.float32)
        for u, rows in enumerate(seeds):
            if rows:
                queries[u] = unit[rows].sum(axis=0)
        sims = queries @ unit.T
        sims[:, 0] = -np.inf  # padding row (and unknown ids, which map to it)
        for u, (rows, exclude) in enumerate(zip(seeds, excludes, strict=True)):
            sims[u, rows] = -np.inf
            if exclude:
                sims[u, [row(i) for i in exclude]] = -np.inf
        k = min(k, sims.shape[1] - 1)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out: list[list[str]] = []
        for u, rows in enumerate(seeds):
            if not rows:
                out.append([])
                continue
            order = top[u][np.argsort(-sims[u, top[u]], kind="stable")]
            out.append([self._raw_ids[r] for r in order if np.isfinite(sims[u, r])])
        return out

    async def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Scores per user for ragged candidate lists (padded to one batch, then cut)."""
        if not histories:
            return []
        width = max((len(c) for c in candidates), default=0)
        if width == 0:
            return [np.zeros(0, dtype=np.float32) for _ in candidates]
        rows = np.zeros((len(candidates), width), dtype=np.int64)
        for b, line in enumerate(candidates):
            rows[b, : len(line)] = [self._scorer.row(i) for i in line]
        scores = await self._scorer.score(self._scorer.histories(histories), rows)
        out = []
        for b, line in enumerate(candidates):
            s = np.asarray(scores[b, : len(line)], dtype=np.float32).copy()
            s[rows[b, : len(line)] == 0] = _UNKNOWN_SCORE
            out.append(s)
        return out

    async def similar_to_texts(
        self, texts: Sequence[str], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[tuple[str, float]]]:
        """Items nearest (cosine in the joint space) to each free text, with the cosine."""
        if not texts or k <= 0:
            return [[] for _ in texts]
        queries = await self._scorer.joint_from_texts(texts)
        # After the await: items may have been added meanwhile, and the rows of
        # ``exclude`` must index the same table as the unit vectors.
        unit = self._unit_vectors()
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        sims = (queries / norms) @ unit.T
        sims[:, 0] = -np.inf
        row = self._scorer.row
        for u, exclude in enumerate(excludes):
            if exclude:
                sims[u, [row(i) for i in exclude]] = -np.inf
        k = min(k, sims.shape[1] - 1)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out: list[list[tuple[str, float]]] = []
        for u in range(len(texts)):
            order = top[u][np.argsort(-sims[u, top[u]], kind="stable")]
            out.append(
                [(self._raw_ids[r], float(sims[u, r])) for r in order if np.isfinite(sims[u, r])]
            )
        return out

    async def add_items(self, item_ids: Sequence[str], texts: Sequence[str]) -> None:
        """Add items the model does not know, from their text (A-LLMRec's text path);
        re-embed run-time items whose text changed (an edit, an LLM enrichment)."""
        new = [(i, t) for i, t in zip(item_ids, texts, strict=True) if not self._scorer.row(i)]
        changed = [
            (i, t)
            for i, t in zip(item_ids, texts, strict=True)
            if self.is_new(i) and self._texts.get(i) not in (None, t)
        ]
        if new:
            await self._scorer.add_items([i for i, _ in new], [t for _, t in new])
            logger.info("model: %d new items added from text", len(new))
        if changed:
            await self._scorer.replace_text_items(
                [i for i, _ in changed], [t for _, t in changed], first_row=self._trained_rows + 1
            )
            self._unit = None  # neighbours must see the new vectors
            logger.info("model: %d run-time items re-embedded from new text", len(changed))
        for i, t in (*new, *changed):
            self._texts[i] = t

    def known_items(self) -> list[str]:
        """Every item id the model can score, in table order."""
        return [self._scorer.raw_id(row) for row in range(1, self._scorer.n_items + 1)]

    @property
    def has_new_items(self) -> bool:
        """Whether any item was added at run time from its text."""
        return self._scorer.n_items > self._trained_rows

    def is_trained(self, item_id: str) -> bool:
        """True for items the model was trained on (they carry collaborative signal)."""
        return 0 < self._scorer.row(item_id) <= self._trained_rows

    def is_new(self, item_id: str) -> bool:
        """True for items the model knows from their text only (added at run time)."""
        return self._scorer.row(item_id) > self._trained_rows

    def popular(self) -> list[str]:
        """Fallback popularity before any live counts exist: none is shipped, so empty."""
        return []
