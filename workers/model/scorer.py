"""The Scorer: A-LLMRec scoring of many users x candidates through onnxruntime.

Usage::

    async with Scorer(settings.model) as scorer:
        hist = scorer.histories([["50", "181"], ["1"]])        # raw ids -> rows [B, L]
        cand = scorer.rows([["100", "258"], ["7", "12"]])      # raw ids -> rows [B, C]
        scores = await scorer.score(hist, cand)                # float32 [B, C]
        await scorer.add_items(["new-1"], ["A film (2026). Genres: Drama."])

How a score is computed (see docs/model.md): the served model (the
content-aware SASRec and the ID-only SASRec as one model, or the content
model alone) reads the history rows of ``item_input`` and yields a user
vector ``u`` (d values); the candidate's row ``j`` of ``item_joint`` (d + 1
values) gives ``score = <u, j[:d]> + j[d]``. A trained item's row is its ID
embedding plus its projected text (then, in the pair, its SASRec ID
embedding); a cold item's, or one added here from its text, is the projected
text alone (a zero ID half) with the offset fitted without test data in the
last column, so new items compete with trained ones in the same ranking.

Inference and table updates run on one dedicated thread, off the event loop
and serialised with each other, so a new item never races a batch. The
tables grow in place (capacity doubling) when items are added.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.errors import ModelError
from workers.model.manifest import ModelManifest, load_manifest
from workers.model.runtime import open_session
from workers.model.settings import ModelSettings
from workers.model.text_encoder import TextEncoder
from workers.resources import Resource

__all__ = ["Scorer"]

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class _Table:
    """A float32 row table that grows by doubling; ``view`` is the live part."""

    def __init__(self, rows: FloatArray) -> None:
        self._buf = np.ascontiguousarray(rows, dtype=np.float32)
        self.size = rows.shape[0]

    @property
    def view(self) -> FloatArray:
        return self._buf[: self.size]

    def append(self, rows: FloatArray) -> None:
        need = self.size + rows.shape[0]
        if need > self._buf.shape[0]:
            grown = np.empty(
                (max(need, 2 * self._buf.shape[0]), self._buf.shape[1]), dtype=np.float32
            )
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : need] = rows
        self.size = need


class Scorer(Resource):
    """An A-LLMRec model directory; a :class:`~workers.resources.Resource`
    (``async with Scorer(settings)`` loads it on the scorer thread).

    Closing twice is safe; opening a closed (or already open) scorer raises
    :class:`~workers.errors.ResourceClosedError`.
    """

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__()
        self._settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._manifest: ModelManifest | None = None
        self._scorer: Any = None
        self._user_encoder: Any = None
        self._text_to_joint: Any = None
        self._text_encoder: TextEncoder | None = None
        self._input: _Table | None = None
        self._joint: _Table | None = None
        self._index: dict[str, int] = {}
        self._raw_ids: list[str] = []
        self.provider = ""

    def __repr__(self) -> str:
        return f"Scorer(state={self.state.value}, model_dir={str(self._settings.model_dir)!r})"

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        # One thread: onnxruntime parallelises inside a run (intra-op threads);
        # one runner keeps table appends ordered with the batches around them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        except BaseException:
            # The base leaves a failed open unopened; nothing of it may linger.
            await self._close()
            raise

    async def _close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        self._scorer = self._user_encoder = self._text_to_joint = self._text_encoder = None

    def _load(self) -> None:
        started = time.perf_counter()
        manifest = load_manifest(self._settings.model_dir)
        self._scorer = open_session(manifest.path("scorer"), self._settings)
        self._user_encoder = open_session(manifest.path("user_encoder"), self._settings)
        self._text_to_joint = open_session(manifest.path("text_to_joint"), self._settings)
        try:
            item_input = np.load(manifest.path("item_input"))
            item_joint = np.load(manifest.path("item_joint"))
            raw_ids = json.loads(manifest.path("item_ids").read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"unreadable item table in {manifest.directory}: {exc}") from exc
        if not (item_input.shape[0] == item_joint.shape[0] == len(raw_ids)):
            raise ModelError(f"item tables disagree in {manifest.directory}")
        self._input, self._joint = _Table(item_input), _Table(item_joint)
        self._raw_ids = [str(r) for r in raw_ids]
        self._index = {raw: row for row, raw in enumerate(self._raw_ids) if row}
        self._manifest = manifest
        self.provider = self._scorer.get_providers()[0]
        log.info(
            "scorer loaded model %s (%d items) on %s in %.2fs",
            manifest.version,
            len(self._raw_ids) - 1,
            self.provider,
            time.perf_counter() - started,
        )

    def _require(self) -> ModelManifest:
        self._require_open()
        assert self._manifest is not None
        return self._manifest

    async def _run(self, fn: Any, *args: Any) -> Any:
        self._require()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- ids ---------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._require().version

    @property
    def max_len(self) -> int:
        return self._require().max_len

    @property
    def n_items(self) -> int:
        """Items known to the scorer (padding row excluded)."""
        return len(self._raw_ids) - 1

    def row(self, raw_id: str) -> int:
        """The table row of ``raw_id``; 0 (padding) when unknown."""
        return self._index.get(raw_id, 0)

    def raw_id(self, row: int) -> str:
        return self._raw_ids[row]

    def rows(self, raw_ids: Sequence[Sequence[str]]) -> IntArray:
        """Equal-length lists of raw ids -> rows [B, C] (unknown ids -> 0)."""
        return np.asarray([[self.row(r) for r in line] for line in raw_ids], dtype=np.int64)

    def histories(self, raw_histories: Iterable[Sequence[str]]) -> IntArray:
        """Chronological raw-id histories -> left-padded rows [B, max_len] (newest last)."""
        length = self.max_len
        lines = list(raw_histories)
        out = np.zeros((len(lines), length), dtype=np.int64)
        for b, line in enumerate(lines):
            ids = [r for r in (self.row(x) for x in line) if r][-length:]
            if ids:
                out[b, length - len(ids) :] = ids
        return out

    # -- inference ---------------------------------------------------------

    def _pad(self, histories: IntArray) -> IntArray:
        length = self.max_len
        h = np.asarray(histories, dtype=np.int64)
        if h.ndim != 2:
            raise ValueError(f"histories must be [B, L], got shape {h.shape}")
        if h.shape[1] > length:
            return np.ascontiguousarray(h[:, -length:])
        if h.shape[1] < length:
            return np.pad(h, ((0, 0), (length - h.shape[1], 0)))
        return h

    def score_sync(self, histories: IntArray, candidates: IntArray) -> FloatArray:
        """Scores [B, C] on the calling thread (the executor calls this; so may benchmarks)."""
        self._require()
        assert self._input is not None and self._joint is not None
        h = self._pad(histories)
        c = np.asarray(candidates, dtype=np.int64)
        if c.ndim != 2 or c.shape[0] != h.shape[0]:
            raise ValueError(f"candidates must be [B, C] with B={h.shape[0]}, got {c.shape}")
        if h.shape[0] == 0 or c.shape[1] == 0:
            return np.zeros(c.shape, dtype=np.float32)
        if c.min() < 0 or c.max() >= self._input.size or h.min() < 0 or h.max() >= self._input.size:
            raise ValueError("item rows out of range")
        try:
            (scores,) = self._scorer.run(
                None,
                {
                    "histories": h,
                    "candidates": c,
                    "item_input": self._input.view,
                    "item_joint": self._joint.view,
                },
            )
        except Exception as exc:
            raise ModelError(f"scoring failed: {exc}") from exc
        result: FloatArray = scores
        return result

    async def score(self, histories: IntArray, candidates: IntArray) -> FloatArray:
        """Score every user's candidates: rows [B, L] x rows [B, C] -> float32 [B, C]."""
        result: FloatArray = await self._run(self.score_sync, histories, candidates)
        return result

    def _users(self, histories: IntArray) -> FloatArray:
        assert self._input is not None
        (users,) = self._user_encoder.run(
            None,
            {
                "histories": self._pad(histories),
                "item_input": self._input.view,
            },
        )
        result: FloatArray = users
        return result

    async def user_vectors(self, histories: IntArray) -> FloatArray:
        """User representations [B, d] (the served model's last position; for the pair
        ``[0.5 u_content, 0.5 u_id]``, d = 128) for rows [B, L]."""
        result: FloatArray = await self._run(self._users, histories)
        return result

    def _encoder(self) -> TextEncoder:
        """The MiniLM runtime, loaded on first use (runs on the scorer thread)."""
        if self._text_encoder is None:
            self._text_encoder = TextEncoder(self._require(), self._settings)
        return self._text_encoder

    def _encode(self, texts: list[str]) -> FloatArray:
        return self._encoder().encode(texts)

    def _add(self, raw_ids: Sequence[str], texts: Sequence[str]) -> IntArray:
        assert self._input is not None and self._joint is not None
        emb = self._encoder().encode(texts)
        new_input, new_joint = self._text_to_joint.run(None, {"text_embeddings": emb})
        rows = np.empty(len(raw_ids), dtype=np.int64)
        fresh: list[int] = []
        for k, raw in enumerate(raw_ids):
            existing = self._index.get(raw)
            if existing is None:
                fresh.append(k)
                rows[k] = self._input.size + len(fresh) - 1
            else:
                # Known items keep their rows: trained rows carry collaborative signal.
                rows[k] = existing
        if fresh:
            self._input.append(new_input[fresh])
            self._joint.append(new_joint[fresh])
            for k in fresh:
                self._raw_ids.append(raw_ids[k])
                self._index[raw_ids[k]] = int(rows[k])
        return rows

    async def add_items(self, raw_ids: Sequence[str], texts: Sequence[str]) -> IntArray:
        """Make new items scoreable from their text alone; returns their rows.

        Items already known keep their rows (and their collaborative embedding).
        """
        if len(raw_ids) != len(texts):
            raise ValueError("raw_ids and texts differ in length")
        result: IntArray = await self._run(self._add, list(raw_ids), list(texts))
        return result

    def _replace(self, raw_ids: Sequence[str], texts: Sequence[str], first_row: int) -> int:
        assert self._input is not None and self._joint is not None
        rows = [self._index.get(r, 0) for r in raw_ids]
        keep = [k for k, row in enumerate(rows) if row >= first_row]
        if not keep:
            return 0
        emb = self._encoder().encode([texts[k] for k in keep])
        new_input, new_joint = self._text_to_joint.run(None, {"text_embeddings": emb})
        for n, k in enumerate(keep):
            self._input.view[rows[k]] = new_input[n]
            self._joint.view[rows[k]] = new_joint[n]
        return len(keep)

    async def replace_text_items(
        self, raw_ids: Sequence[str], texts: Sequence[str], *, first_row: int
    ) -> int:
        """Re-embed items known from text only (rows >= ``first_row``) from new text
        (an enriched description); trained rows are never touched. Returns how many."""
        if len(raw_ids) != len(texts):
            raise ValueError("raw_ids and texts differ in length")
        result: int = await self._run(self._replace, list(raw_ids), list(texts), first_row)
        return result

    def item_vectors(self) -> FloatArray:
        """A copy of the joint item vectors [rows, s] (row 0 is padding): the
        manifest's first ``similarity_dim`` columns, the ones that carry text
        (the bias column and the pair's ID half dropped).

        For nearest-neighbour candidate generation in the joint space.
        """
        manifest = self._require()
        assert self._joint is not None
        return self._joint.view[:, : manifest.similarity_dim].copy()

    async def encode_texts(self, texts: Sequence[str]) -> FloatArray:
        """MiniLM sentence embeddings [N, 384] through the ONNX text encoder."""
        result: FloatArray = await self._run(self._encode, list(texts))
        return result

    def _joint_from_texts(self, texts: list[str]) -> FloatArray:
        emb = self._encoder().encode(texts)
        _, joint = self._text_to_joint.run(None, {"text_embeddings": emb})
        similarity_dim = self._require().similarity_dim
        result: FloatArray = np.asarray(joint, dtype=np.float32)[:, :similarity_dim]
        return result

    async def joint_from_texts(self, texts: Sequence[str]) -> FloatArray:
        """Joint-space vectors [N, s] of free texts (a chat query, a stated context),
        comparable with :meth:`item_vectors`; nothing is added to the item table."""
        result: FloatArray = await self._run(self._joint_from_texts, list(texts))
        return result
