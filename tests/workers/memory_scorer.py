"""An in-memory scorer for the recommendation-logic tests (no ONNX, no model files).

It implements :class:`workers.recommend.Scorer` with hashed bag-of-words
vectors of each item's text: items that share words (genres, title words) are
neighbours, a user scores items close to the mean of their recent history,
and free text lands next to items that share its words. Deterministic, so
tests can assert exact outcomes of the logic around the model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence

import numpy as np

DIM = 4096
# Words every item's text has: they would make every item a neighbour of every other.
STOP = {"genres", "1995", "the", "a", "of", "in", "and"}


def vector(text: str) -> np.ndarray:
    out = np.zeros(DIM, dtype=np.float32)
    for word in re.findall(r"[a-z0-9'-]+", text.lower()):
        if word in STOP:
            continue
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
        out[h % DIM] += 1.0
    norm = np.linalg.norm(out)
    return out / norm if norm else out


class MemoryScorer:
    def __init__(self, items: dict[str, str] | None = None) -> None:
        self._ids: list[str] = []
        self._vecs: list[np.ndarray] = []
        self._row: dict[str, int] = {}
        self._trained = 0
        for item_id, text in (items or {}).items():
            self._put(item_id, text)
        self._trained = len(self._ids)

    def _put(self, item_id: str, text: str) -> None:
        if item_id in self._row:
            self._vecs[self._row[item_id]] = vector(text)
        else:
            self._row[item_id] = len(self._ids)
            self._ids.append(item_id)
            self._vecs.append(vector(text))

    @property
    def version(self) -> str:
        return "memory-1"

    def _matrix(self) -> np.ndarray:
        return np.stack(self._vecs) if self._vecs else np.zeros((0, DIM), dtype=np.float32)

    def similar_many(
        self, seed_lists: Sequence[Sequence[str]], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[str]]:
        m = self._matrix()
        out: list[list[str]] = []
        for seeds, exclude in zip(seed_lists, excludes, strict=True):
            rows = [self._row[s] for s in seeds if s in self._row]
            if not rows or k <= 0:
                out.append([])
                continue
            sims = m @ m[rows].sum(axis=0)
            skip = set(seeds) | set(exclude)
            order = sorted(range(len(self._ids)), key=lambda r: (-sims[r], self._ids[r]))
            out.append([self._ids[r] for r in order if self._ids[r] not in skip][:k])
        return out

    async def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        m = self._matrix()
        out = []
        for history, cands in zip(histories, candidates, strict=True):
            rows = [self._row[h] for h in history[-5:] if h in self._row]
            user = m[rows].mean(axis=0) if rows else np.zeros(DIM, dtype=np.float32)
            out.append(
                np.asarray(
                    [float(m[self._row[c]] @ user) if c in self._row else -1e9 for c in cands],
                    dtype=np.float32,
                )
            )
        return out

    async def add_items(self, item_ids: Sequence[str], texts: Sequence[str]) -> None:
        for item_id, text in zip(item_ids, texts, strict=True):
            if item_id not in self._row or self._row[item_id] >= self._trained:
                self._put(item_id, text)

    async def similar_to_texts(
        self, texts: Sequence[str], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[tuple[str, float]]]:
        m = self._matrix()
        out = []
        for text, exclude in zip(texts, excludes, strict=True):
            sims = m @ vector(text) if len(m) else np.zeros(0)
            order = sorted(range(len(self._ids)), key=lambda r: (-sims[r], self._ids[r]))
            out.append(
                [(self._ids[r], float(sims[r])) for r in order if self._ids[r] not in exclude][:k]
            )
        return out

    def popular(self) -> list[str]:
        return []

    def is_trained(self, item_id: str) -> bool:
        return self._row.get(item_id, self._trained) < self._trained

    def is_new(self, item_id: str) -> bool:
        return self._row.get(item_id, -1) >= self._trained

    @property
    def has_new_items(self) -> bool:
        return len(self._ids) > self._trained
