"""Benchmark the ONNX scorer: users/s, candidate scores/s, p50/p99 per batch.

Runs :class:`workers.model.Scorer` on an exported model directory through its
public async API (so the thread hop off the event loop is included), for every
B in {1, 32, 256} users per batch and C in {100, 1000} candidates per user,
with random full-length histories (L = max_len) and random candidates.

    python benchmarks/bench_scorer.py                       # RECSTREAM_MODEL_DIR or .local
    python benchmarks/bench_scorer.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.model import ModelSettings, Scorer

BATCHES = (1, 32, 256)
CANDIDATES = (100, 1000)


async def bench(settings: ModelSettings, seconds: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    async with Scorer(settings) as scorer:
        n, length = scorer.n_items, scorer.max_len
        print(
            f"model {scorer.version}: {n} items, L={length}; provider {scorer.provider}; "
            f"intra-op threads {settings.intra_op_threads}"
        )
        print(
            f"{'B':>5} {'C':>6} {'users/s':>10} {'cand scores/s':>14} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'batches':>8}"
        )
        for b in BATCHES:
            for c in CANDIDATES:
                hist = rng.integers(1, n + 1, (b, length), dtype=np.int64)
                cand = rng.integers(1, n + 1, (b, c), dtype=np.int64)
                for _ in range(5):
                    await scorer.score(hist, cand)
                lat: list[float] = []
                started = time.perf_counter()
                while time.perf_counter() - started < seconds or len(lat) < 20:
                    t0 = time.perf_counter()
                    await scorer.score(hist, cand)
                    lat.append(time.perf_counter() - t0)
                total = time.perf_counter() - started
                arr = np.asarray(lat)
                row = {
                    "B": b,
                    "C": c,
                    "users_per_s": b * len(lat) / total,
                    "candidate_scores_per_s": b * c * len(lat) / total,
                    "p50_ms": float(np.percentile(arr, 50) * 1e3),
                    "p99_ms": float(np.percentile(arr, 99) * 1e3),
                    "batches": len(lat),
                }
                rows.append(row)
                print(
                    f"{b:>5} {c:>6} {row['users_per_s']:>10.0f} "
                    f"{row['candidate_scores_per_s']:>14.0f} {row['p50_ms']:>8.2f} "
                    f"{row['p99_ms']:>8.2f} {len(lat):>8}"
                )
        provider = scorer.provider
        version = scorer.version
    return {
        "provider": provider,
        "model_version": version,
        "intra_op_threads": settings.intra_op_threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    # Only the model section: the full Settings would import the LLM stack,
    # which the GPU check's bare machine does not carry.
    defaults = ModelSettings.from_mapping(os.environ)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=defaults.model_dir)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--seconds", type=float, default=2.0, help="per (B, C) configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    settings = ModelSettings(
        model_dir=args.model_dir,
        intra_op_threads=args.threads,
        inter_op_threads=1,
        device=args.device,
    )
    report = asyncio.run(bench(settings, args.seconds, args.seed))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
