"""all-MiniLM-L6-v2 at run time: ``tokenizers`` + the exported ONNX graph (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from workers.errors import ModelError
from workers.model.manifest import ModelManifest
from workers.model.runtime import open_session
from workers.model.settings import ModelSettings

__all__ = ["TextEncoder"]


class TextEncoder:
    """Texts -> L2-normalised 384-d sentence embeddings (pooling is inside the graph).

    Synchronous and not thread-safe: the :class:`~workers.model.Scorer` calls
    it from its one inference thread.
    """

    def __init__(self, manifest: ModelManifest, settings: ModelSettings) -> None:
        if not manifest.path("text_encoder").is_file():
            raise ModelError(
                f"model {manifest.version} has no text encoder ({manifest.path('text_encoder')})"
            )
        self._tokenizer = Tokenizer.from_file(str(manifest.path("tokenizer")))
        self._tokenizer.enable_truncation(manifest.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._session: Any = open_session(manifest.path("text_encoder"), settings)
        self.dim = manifest.text_dim

    def encode(self, texts: Sequence[str], *, batch: int = 64) -> npt.NDArray[np.float32]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch):
            encodings = self._tokenizer.encode_batch(list(texts[start : start + batch]))
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            (emb,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            out[start : start + len(encodings)] = emb
        return out
