"""``recstream export``: a trained run -> a versioned model directory for the workers.

Layout of ``<home>/models/<version>/`` (``<home>/models/current`` points at the
latest export)::

    manifest.json        version, created, data hash, training config, metrics,
                         fusion weights, shapes, file names, parity results
    scorer.onnx          (histories [B,L], candidates [B,C], item_input [N,d],
                          item_joint [N,d+1]) -> scores [B,C]
                         (d = 128 for the pair: content half, then ID half;
                          64 for the content model alone)
    user_encoder.onnx    (histories [B,L], item_input [N,d]) -> user [B,d]
    text_to_joint.onnx   text_embeddings [N,384] -> (new_item_input [N,d],
                                                     new_item_joint [N,d+1])
    text_encoder.onnx    (input_ids [B,T], attention_mask [B,T]) -> sentence_embedding [B,384]
    tokenizer.json       MiniLM's tokenizer (the workers run it with ``tokenizers``)
    item_input.npy       float32 [N,d]   row i = item id i (0 = padding)
    item_joint.npy       float32 [N,d+1]
    item_ids.json        raw item ids, row order (row 0 = padding "")

The item tables are graph *inputs*, not weights, so workers append rows for
new items at run time without re-exporting. Every graph is checked against
torch on several shapes (max abs difference printed, must be <= 1e-4).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from workers.training import DEFAULT_HOME
from workers.training.evaluate import item_tables
from workers.training.models import CandidateScorer, SASRecPair, TextToJoint, UserEncoder
from workers.training.text import MAX_TOKENS, MiniLMEncoder, load_tokenizer, model_path, tokenize
from workers.training.train import Trained, load_run

__all__ = ["PARITY_TOLERANCE", "export_run", "main"]

PARITY_TOLERANCE = 1e-4
MANIFEST_FORMAT = 1


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: tuple[dict[int, Any] | None, ...],
) -> None:
    module.eval()
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=True,
        external_data=False,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic,
        optimize=True,
        verbose=False,
    )


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _parity(module: nn.Module, path: Path, cases: list[dict[str, torch.Tensor]]) -> float:
    sess = _session(path)
    worst = 0.0
    for feeds in cases:
        with torch.no_grad():
            expected = module(*feeds.values())
        expected_t = expected if isinstance(expected, tuple) else (expected,)
        got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
        for e, g in zip(expected_t, got, strict=True):
            worst = max(worst, float(np.abs(e.numpy() - g).max()))
    return worst


def export_run(
    trained: Trained, out_dir: Path, *, version: str, metrics: dict[str, Any] | None
) -> dict[str, Any]:
    """Write the model directory; return the manifest (raises if parity fails)."""
    cfg = trained.config
    out_dir.mkdir(parents=True, exist_ok=True)
    item_input, item_joint = item_tables(trained)
    n, d, length = item_input.shape[0], item_input.shape[1], cfg.max_len
    pair = isinstance(trained.model, SASRecPair)
    gen = torch.Generator().manual_seed(0)

    def hist(b: int) -> torch.Tensor:
        h = torch.randint(1, n, (b, length), generator=gen)
        h[: b // 2, : length // 2] = 0  # some left padding, as real short histories
        return h

    batch, cand, rows = (
        torch.export.Dim("batch"),
        torch.export.Dim("candidates"),
        torch.export.Dim("items"),
    )
    parity: dict[str, float] = {}

    scorer = CandidateScorer(trained.model).eval()
    c0 = torch.randint(1, n, (3, 7), generator=gen)
    _export(
        scorer,
        (hist(3), c0, item_input, item_joint),
        out_dir / "scorer.onnx",
        ["histories", "candidates", "item_input", "item_joint"],
        ["scores"],
        ({0: batch}, {0: batch, 1: cand}, {0: rows}, {0: rows}),
    )
    parity["scorer"] = _parity(
        scorer,
        out_dir / "scorer.onnx",
        [
            {
                "histories": hist(b),
                "candidates": torch.randint(1, n, (b, c), generator=gen),
                "item_input": item_input,
                "item_joint": item_joint,
            }
            for b, c in ((1, 1), (2, 100), (17, 13), (64, 1000))
        ],
    )

    user_enc = UserEncoder(trained.model).eval()
    _export(
        user_enc,
        (hist(3), item_input),
        out_dir / "user_encoder.onnx",
        ["histories", "item_input"],
        ["user"],
        ({0: batch}, {0: rows}),
    )
    parity["user_encoder"] = _parity(
        user_enc,
        out_dir / "user_encoder.onnx",
        [{"histories": hist(b), "item_input": item_input} for b in (1, 5, 64)],
    )

    to_joint = TextToJoint(
        trained.model, trained.fusion["cold"], trained.fusion.get("cold_scale", 1.0)
    ).eval()
    text_dim = trained.text.shape[1]
    _export(
        to_joint,
        (torch.randn(4, text_dim, generator=gen),),
        out_dir / "text_to_joint.onnx",
        ["text_embeddings"],
        ["new_item_input", "new_item_joint"],
        ({0: rows},),
    )
    parity["text_to_joint"] = _parity(
        to_joint,
        out_dir / "text_to_joint.onnx",
        [{"text_embeddings": trained.text[1:][idx]} for idx in (slice(0, 1), slice(0, 33))],
    )

    encoder = MiniLMEncoder().eval()
    tok = load_tokenizer()
    ids, mask = tokenize(
        tok,
        [
            "Toy Story (1995). Genres: Animation.",
            "A much longer title of a film nobody made (1999). Genres: Drama, Romance.",
        ],
    )
    seq = torch.export.Dim("tokens", max=MAX_TOKENS)
    _export(
        encoder,
        (ids, mask),
        out_dir / "text_encoder.onnx",
        ["input_ids", "attention_mask"],
        ["sentence_embedding"],
        ({0: batch, 1: seq}, {0: batch, 1: seq}),
    )
    texts = trained.data.item_text
    parity["text_encoder"] = _parity(
        encoder,
        out_dir / "text_encoder.onnx",
        [
            dict(zip(("input_ids", "attention_mask"), tokenize(tok, chunk), strict=True))
            for chunk in (texts[:1], texts[1:9], ["x"], texts[100:132])
        ],
    )
    for name, diff in parity.items():
        print(f"parity {name:<14} max |onnxruntime - torch| = {diff:.2e}")
    bad = {k: v for k, v in parity.items() if not v <= PARITY_TOLERANCE}
    if bad:
        raise RuntimeError(f"ONNX parity above {PARITY_TOLERANCE}: {bad}")

    shutil.copyfile(model_path() / "tokenizer.json", out_dir / "tokenizer.json")
    np.save(out_dir / "item_input.npy", item_input.numpy().astype(np.float32))
    np.save(out_dir / "item_joint.npy", item_joint.numpy().astype(np.float32))
    (out_dir / "item_ids.json").write_text(json.dumps(["", *trained.data.item_raw_ids]))
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": "A-LLMRec: content-aware SASRec (ID + projected text, ID dropout)"
        + (" and ID-only SASRec as one model (scores averaged)" if pair else "")
        + ", calibrated prior column; stage 1 joint space in the run checkpoint",
        "data_hash": trained.data.data_hash,
        "cold_items": [trained.data.item_raw_ids[i - 1] for i in trained.data.cold_items],
        "training_config": vars(cfg) | {},
        "training": trained.history,
        "fusion": trained.fusion,
        "metrics": metrics or {},
        "shapes": {
            "max_len": length,
            "dim": d,
            "joint_cols": d + 1,
            # Item-to-item and text-to-item neighbours use the first columns
            # only: the ones that carry text (the pair's content half).
            "similarity_dim": trained.model.similarity_dim,
            "items": n,
            "text_dim": text_dim,
            "max_tokens": MAX_TOKENS,
        },
        "files": {
            "scorer": "scorer.onnx",
            "user_encoder": "user_encoder.onnx",
            "text_to_joint": "text_to_joint.onnx",
            "text_encoder": "text_encoder.onnx",
            "tokenizer": "tokenizer.json",
            "item_input": "item_input.npy",
            "item_joint": "item_joint.npy",
            "item_ids": "item_ids.json",
        },
        "parity_max_abs_diff": parity,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def point_current(models_dir: Path, version: str) -> Path:
    """Atomically repoint ``models/current`` at ``version`` (a relative symlink)."""
    link = models_dir / "current"
    tmp = models_dir / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    tmp.replace(link)
    return link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="runtime folder (the launcher passes RECSTREAM_HOME)",
    )
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: latest)")
    parser.add_argument(
        "--out", type=Path, default=None, help="model directory (default: <home>/models/<run name>)"
    )
    parser.add_argument("--no-current", action="store_true", help="leave models/current alone")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The exporter warns once per graph that torchvision's ops are not registered,
    # and about axis names it merges (we name every axis on purpose); both are noise.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx\..*")
    runs = args.home / "runs"
    run_dir = args.run or max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    trained = load_run(run_dir, args.home / "cache")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    out = args.out or args.home / "models" / run_dir.name
    started = time.perf_counter()
    export_run(trained, out, version=run_dir.name, metrics=metrics)
    if args.out is None and not args.no_current:
        point_current(out.parent, out.name)
    print(f"exported in {time.perf_counter() - started:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
