"""Configuration of the recommender model and its scorer (see workers.settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workers.env import REPO_ROOT, env_int, env_str
from workers.errors import ConfigError

__all__ = ["DEVICES", "ModelSettings"]

DEVICES = frozenset({"auto", "cpu", "cuda"})


@dataclass(frozen=True)
class ModelSettings:
    """Where model artifacts live, how the ONNX scorer runs, where training runs."""

    # A versioned model directory (manifest.json + *.onnx + item tables);
    # `recstream export` repoints <home>/models/current at the newest one.
    model_dir: Path = REPO_ROOT / ".local" / "models" / "current"
    # onnxruntime intra-op threads per session; 0 lets onnxruntime choose (all
    # cores). 1 by default: a worker runs one scorer per process and scales by
    # replicas, and oversubscribed threads on busy cores cost 3-6x.
    intra_op_threads: int = 1
    # Inter-op threads: the graphs are sequential, so more than 1 only adds contention.
    inter_op_threads: int = 1
    # "auto" prefers CUDA when onnxruntime can create it, else CPU; "cpu"/"cuda" force.
    device: str = "auto"
    # The training virtualenv's interpreter (torch lives only there, see
    # pyproject's `train` extra); `recstream train|evaluate|export` re-exec it.
    train_python: Path = REPO_ROOT / ".venv-train" / "bin" / "python"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(
                f"RECSTREAM_MODEL_DEVICE must be one of {sorted(DEVICES)}, got {self.device!r}"
            )

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> ModelSettings:
        return cls(
            model_dir=Path(env_str(env, "MODEL_DIR", str(cls.model_dir))),
            intra_op_threads=env_int(env, "ORT_THREADS", cls.intra_op_threads, minimum=0),
            inter_op_threads=env_int(env, "ORT_INTER_THREADS", cls.inter_op_threads, minimum=1),
            device=env_str(env, "MODEL_DEVICE", cls.device).lower(),
            train_python=Path(env_str(env, "TRAIN_PYTHON", str(cls.train_python))),
        )
