"""Configuration of the recommender model and its scorer (see workers.settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workers.settings import REPO_ROOT, env_int, env_str

__all__ = ["ModelSettings"]


@dataclass(frozen=True)
class ModelSettings:
    """Where model artifacts live and how the ONNX scorer runs."""

    # A versioned model directory (manifest.json + *.onnx + item table).
    model_dir: Path = REPO_ROOT / ".local" / "models" / "current"
    # onnxruntime intra-op threads; 0 lets onnxruntime choose (all cores).
    intra_op_threads: int = 1
    # "auto" prefers CUDA when onnxruntime can create it, else CPU.
    device: str = "auto"

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> ModelSettings:
        return cls(
            model_dir=Path(env_str(env, "MODEL_DIR", str(cls.model_dir))),
            intra_op_threads=env_int(env, "ORT_THREADS", cls.intra_op_threads, minimum=0),
            device=env_str(env, "MODEL_DEVICE", cls.device),
        )
