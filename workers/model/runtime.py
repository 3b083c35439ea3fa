"""onnxruntime sessions: provider choice and thread settings in one place."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

from workers.errors import ModelError
from workers.model.settings import ModelSettings

__all__ = ["choose_providers", "open_session"]

log = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def choose_providers(device: str) -> list[str]:
    """Providers to ask for: CUDA first only where this onnxruntime build has it."""
    if device == "cpu":
        return [_CPU]
    available = ort.get_available_providers()
    if _CUDA in available and not (_cuda_failed and device == "auto"):
        return [_CUDA, _CPU]
    if device == "cuda":
        raise ModelError(f"RECSTREAM_MODEL_DEVICE=cuda but onnxruntime offers {available}")
    return [_CPU]


def open_session(path: Path, settings: ModelSettings) -> Any:
    """An InferenceSession for ``path``; falls back to CPU when CUDA cannot start."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = choose_providers(settings.device)
    if _CUDA in providers:
        _preload_cuda()
        # A GPU build on a machine without CUDA logs a loud load error before it
        # falls back; the fallback is checked below, so silence the attempt.
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        raise ModelError(f"cannot load {path.name}: {exc}") from exc
    finally:
        ort.set_default_logger_severity(2)
    active = session.get_providers()
    if _CUDA in providers and _CUDA not in active:
        if settings.device == "cuda":
            raise ModelError(f"CUDAExecutionProvider could not start for {path.name}")
        _cuda_failed.add(True)
        log.info("CUDA provider unavailable for %s; using %s", path.name, active[0])
    return session


# Set once CUDA failed to start in this process, so later sessions skip the attempt.
_cuda_failed: set[bool] = set()


@functools.cache
def _preload_cuda() -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels, where they are installed (once)."""
    if importlib.util.find_spec("nvidia") is None:
        return
    try:
        ort.preload_dlls()
    except Exception as exc:  # optional: the session decides whether CUDA starts
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
