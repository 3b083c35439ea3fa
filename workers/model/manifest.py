"""The model directory written by ``recstream export`` and its manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.errors import ModelError

__all__ = ["MANIFEST_FORMAT", "ModelManifest", "load_manifest"]

# Bumped when the directory layout or a graph signature changes incompatibly.
MANIFEST_FORMAT = 1

_REQUIRED_FILES = (
    "scorer",
    "user_encoder",
    "text_to_joint",
    "tokenizer",
    "item_input",
    "item_joint",
    "item_ids",
)
# Loaded on first use (a new item's text): scoring works without it, and a
# slim copy of the directory (the GPU check) may leave its ~90 MB out.
_LAZY_FILES = ("text_encoder",)


@dataclass(frozen=True)
class ModelManifest:
    """What a model directory holds; paths are resolved against the directory."""

    directory: Path
    version: str
    created: str
    data_hash: str
    max_len: int
    dim: int
    # Leading columns of the item rows that neighbour searches compare: the
    # ones that carry text (the pair's content half; all of them otherwise).
    similarity_dim: int
    text_dim: int
    max_tokens: int
    files: dict[str, Path]
    raw: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.files[name]


def load_manifest(model_dir: Path) -> ModelManifest:
    """Read and check ``manifest.json`` (raises :class:`ModelError` if unusable)."""
    directory = model_dir.resolve()
    try:
        raw: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise ModelError(
            f"no model at {model_dir} (run `recstream train` and "
            "`recstream export`, or set RECSTREAM_MODEL_DIR)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable manifest in {model_dir}: {exc}") from exc
    if raw.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"model format {raw.get('format')!r} in {model_dir}, this build reads {MANIFEST_FORMAT}"
        )
    try:
        names = (*_REQUIRED_FILES, *_LAZY_FILES)
        files = {name: directory / raw["files"][name] for name in names}
        shapes = raw["shapes"]
        manifest = ModelManifest(
            directory=directory,
            version=str(raw["version"]),
            created=str(raw["created"]),
            data_hash=str(raw["data_hash"]),
            max_len=int(shapes["max_len"]),
            dim=int(shapes["dim"]),
            similarity_dim=int(shapes.get("similarity_dim", shapes["dim"])),
            text_dim=int(shapes["text_dim"]),
            max_tokens=int(shapes["max_tokens"]),
            files=files,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"incomplete manifest in {model_dir}: {exc!r}") from exc
    if not 0 < manifest.similarity_dim <= manifest.dim:
        raise ModelError(
            f"manifest in {model_dir}: similarity_dim {manifest.similarity_dim} "
            f"outside 1..{manifest.dim}"
        )
    missing = [str(files[name]) for name in _REQUIRED_FILES if not files[name].is_file()]
    if missing:
        raise ModelError(f"model directory {model_dir} lacks {missing}")
    return manifest
