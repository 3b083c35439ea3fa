"""``recstream evaluate``: popularity, BPR-MF, SASRec and A-LLMRec on one split.

Every figure is printed with the protocol that produced it (see
:data:`workers.training.metrics.PROTOCOLS`), and the whole report is written
as JSON (``<run>/metrics.json`` or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.training import DEFAULT_HOME
from workers.training.data import Dataset
from workers.training.metrics import (
    PROTOCOLS,
    Case,
    ScoreFn,
    evaluate_cases,
    popularity_percentile,
)
from workers.training.models import SASRecPair, ServedModel
from workers.training.train import Trained, fit_calibration, left_pad, load_run

__all__ = ["build_cases", "evaluate_run", "item_tables", "main", "print_report"]

SAMPLE_SEED = 2024  # fixed negatives of the 1+19 protocols
N_NEGATIVES = 19


def _sample(rng: np.random.Generator, pool: np.ndarray, seen: set[int], k: int) -> list[int]:
    out: list[int] = []
    chosen: set[int] = set()
    while len(out) < k:
        item = int(pool[rng.integers(len(pool))])
        if item not in seen and item not in chosen:
            chosen.add(item)
            out.append(item)
    return out


def build_cases(data: Dataset) -> dict[str, Case]:
    """Every protocol's test cases (deterministic for a given split).

    With no held-out items (``cold_fraction = 0``) the full ranking is the
    ``standard`` protocol and there are no cold or mixed cases.
    """
    warm_mask = data.warm_mask
    all_mask = np.ones(data.n_items + 1, dtype=bool)
    all_mask[0] = False
    cold_mask = ~warm_mask
    cold_mask[0] = False
    users = np.flatnonzero(data.test > 0)
    hists = [data.train_seqs[u] + [int(data.valid[u])] for u in users]
    rng = np.random.default_rng(SAMPLE_SEED)
    warm_pool = np.flatnonzero(warm_mask)
    all_pool = np.flatnonzero(all_mask)
    sampled = np.array(
        [
            [data.test[u], *_sample(rng, warm_pool, data.all_items_of_user[u], N_NEGATIVES)]
            for u in users
        ]
    )
    full = Case(users, hists, data.test[users], None, warm_mask, hists)
    if not cold_mask.any():
        return {"standard": full, "sampled": sampled_case(full, sampled)}
    # Every other interaction of the user is history, never a negative: a
    # user's other cold positives are not "wrong" answers (nor a warm item
    # rated after the cold target).
    mixed_ex = [sorted(data.all_items_of_user[u] - {int(data.test[u])}) for u in users]
    cu = data.cold_users
    cold_ex = [
        sorted(data.all_items_of_user[u] - {int(t)})
        for u, t in zip(cu, data.cold_target, strict=True)
    ]
    cold_sampled = np.array(
        [
            [t, *_sample(rng, all_pool, data.all_items_of_user[u], N_NEGATIVES)]
            for u, t in zip(cu, data.cold_target, strict=True)
        ]
    ).reshape(-1, 20)
    return {
        "full": full,
        "sampled": sampled_case(full, sampled),
        "mixed": Case(users, hists, data.test[users], None, all_mask, mixed_ex),
        "cold_full": Case(cu, data.cold_hist, data.cold_target, None, all_mask, cold_ex),
        "cold_catalog": Case(cu, data.cold_hist, data.cold_target, None, cold_mask, cold_ex),
        "cold_sampled": Case(cu, data.cold_hist, data.cold_target, cold_sampled, all_mask, cold_ex),
    }


def sampled_case(full: Case, candidates: np.ndarray) -> Case:
    return Case(full.users, full.histories, full.targets, candidates, full.allowed, full.exclude)


@torch.no_grad()
def item_tables(
    trained: Trained, fusion: dict[str, float] | None = None, model: ServedModel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(item_input [N+1, d], item_joint [N+1, d+1]) as exported for the workers.

    With ``v`` the served model's item row (content model: ID embedding +
    W t + b for a warm item, W t + b for a text-only one; the pair: that
    followed by the SASRec ID embedding, zero for a text-only item) and the
    prior weights (pop, cold) fitted without test data:

    - warm item: input = v; joint = [v, pop * log(1 + training count)]
    - cold item, or any item added at run time (text only):
      input = v = W t + b; joint = [cold_scale * v, cold]
    - row 0 (padding) is zero.

    ``fusion`` and ``model`` override the trained ones (the report's ablation rows).
    """
    data = trained.data
    model = trained.model if model is None else model
    fusion = trained.fusion if fusion is None else fusion
    table = model.table()
    cold = torch.from_numpy(data.cold_items)
    warm = torch.from_numpy(np.flatnonzero(data.warm_mask))
    logpop = torch.log1p(torch.from_numpy(data.train_popularity()).float())
    item_joint = torch.zeros(table.shape[0], table.shape[1] + 1)
    item_joint[:, :-1] = table
    item_joint[warm, -1] = fusion["pop"] * logpop[warm]
    item_joint[cold, :-1] *= fusion.get("cold_scale", 1.0)
    item_joint[cold, -1] = fusion["cold"]
    return table.clone(), item_joint


def score_functions(trained: Trained) -> dict[str, ScoreFn]:
    cfg, data, sas, bpr_model = trained.config, trained.data, trained.sasrec, trained.bpr
    counts = torch.from_numpy(data.train_popularity()).double()

    def popularity(hists: Sequence[Sequence[int]], users: np.ndarray) -> np.ndarray:
        return counts.expand(len(hists), -1).numpy()

    baselines: dict[str, ScoreFn] = {}
    if bpr_model is not None:

        @torch.no_grad()
        def bpr(hists: Sequence[Sequence[int]], users: np.ndarray) -> np.ndarray:
            assert bpr_model is not None
            return bpr_model.scores(torch.from_numpy(users)).numpy()

        baselines["BPR-MF"] = bpr
    if sas is not None:

        @torch.no_grad()
        def sasrec(hists: Sequence[Sequence[int]], users: np.ndarray) -> np.ndarray:
            assert sas is not None
            u = sas.user(left_pad(list(hists), cfg.max_len))
            return (u @ sas.item_emb.weight.T).numpy()

        baselines["SASRec"] = sasrec

    def served(fusion: dict[str, float], model: ServedModel | None = None) -> ScoreFn:
        scorer = trained.model if model is None else model
        item_input, item_joint = item_tables(trained, fusion, scorer)

        @torch.no_grad()
        def score(hists: Sequence[Sequence[int]], users: np.ndarray) -> np.ndarray:
            u = scorer.sequence(left_pad(list(hists), cfg.max_len), item_input)[:, -1, :]
            return (u @ item_joint[:, :-1].T + item_joint[:, -1]).numpy()

        return score

    def stage1_text() -> ScoreFn:
        """The joint space's text path alone: every item scored as if text-only."""
        with torch.no_grad():
            joint = trained.stage1.joint_from_text(trained.text)
            joint[0] = 0.0

        @torch.no_grad()
        def score(hists: Sequence[Sequence[int]], users: np.ndarray) -> np.ndarray:
            u = trained.content.user(left_pad(list(hists), cfg.max_len))
            return (u @ joint.T).numpy()

        return score

    fusion = trained.fusion
    mean_logpop = float(counts.log1p()[torch.from_numpy(data.warm_mask)].mean())
    one_offset = trained.history.get("calibration", {}).get("one_offset")
    ablations = {
        # Ablations of the served head: what does each part add?
        "A-LLMRec -calibration": served({"pop": 0.0, "cold": 0.0, "cold_scale": 1.0}),
    }
    if one_offset is not None:
        ablations["A-LLMRec one offset"] = served(
            {"pop": 0.0, "cold": float(one_offset), "cold_scale": 1.0}
        )
    ablations["A-LLMRec +pop prior"] = served(
        {**fusion, "pop": 0.2, "cold": fusion["cold"] + 0.2 * mean_logpop}
    )
    if isinstance(trained.model, SASRecPair):
        # What the ID half adds: the content half served alone, calibrated
        # for itself the way ``recstream train`` calibrates the pair.
        content_fusion = fit_calibration(cfg, data, trained.content, hist={})
        ablations["A-LLMRec content alone"] = served(content_fusion, trained.content)
    return {
        "Popularity": popularity,
        **baselines,
        "A-LLMRec": served(fusion),
        **ablations,
        # An untrained stage 1 (--no-eval, s1_epochs=0) has no row to report.
        **({"stage-1 text path": stage1_text()} if cfg.s1_epochs > 0 else {}),
    }


def evaluate_run(trained: Trained) -> dict[str, Any]:
    data = trained.data
    started = time.perf_counter()
    pct = popularity_percentile(data.train_popularity(), data.warm_mask)
    cases = build_cases(data)
    cold = ~data.warm_mask
    cold[0] = False
    results: dict[str, dict[str, dict[str, float]]] = {}
    fns = score_functions(trained)
    for proto, case in cases.items():
        results[proto] = {
            name: evaluate_cases(case, fn, pct, seed=trained.config.seed, cold_mask=cold)
            for name, fn in fns.items()
        }
    return {
        "dataset": "MovieLens-100k (RecBole 1.2.1 wheel)"
        if not trained.config.synthetic
        else "synthetic",
        "data_hash": data.data_hash,
        "split": {
            "users": data.n_users,
            "items": data.n_items,
            "cold_items": len(data.cold_items),
            "cold_fraction": trained.config.cold_fraction,
            "split_seed": trained.config.split_seed,
            "seed": trained.config.seed,
            "cold_interaction_share": data.cold_interaction_share,
            "test_users": len(next(iter(cases.values())).targets),
            "cold_test_users": len(data.cold_users),
        },
        "protocols": {k: PROTOCOLS[k] for k in cases},
        "results": results,
        "training": trained.history,
        "eval_seconds": time.perf_counter() - started,
    }


def print_report(report: dict[str, Any]) -> None:
    split = report["split"]
    cal = report.get("training", {}).get("calibration", {})
    print(f"\nDataset: {report['dataset']}  ({report['data_hash'][:24]}...)")
    print(
        f"Split: chronological leave-one-out, split seed {split.get('split_seed', split['seed'])}"
        f", training seed {split['seed']}; {split['users']} users, "
        f"{split['items']} items, {split['cold_items']} cold items held out of training "
        f"({100 * split.get('cold_interaction_share', 0.0):.1f}% of interactions); "
        f"{split['test_users']} test users, {split['cold_test_users']} cold test users"
    )
    if cal:
        pair = report.get("training", {}).get("served") == "SASRecPair"
        print(
            "A-LLMRec = content-aware SASRec (item = ID embedding + projected text; cold items "
            "text-only)"
            + (" and ID-only SASRec as one model, scores averaged" if pair else "")
            + f", text-only items scored {cal.get('cold_scale', 1.0)} x <u, v> + "
            f"{cal['cold']} (fitted without test data: cold share of the served top 10s "
            f"{cal.get('served_cold_share@10', cal.get('val_cold_share@10', 0)):.3f} against "
            f"{cal.get('target_cold_share', 0):.3f} "
            "of interactions, the best expected NDCG@10 of the next warm item within "
            f"{cal.get('band', 0.0):.3f} of it). Ablations: '-calibration' = scale 1, offset 0; "
            "'one offset' = scale 1, the offset closest to the interaction share; "
            "'+pop prior' = 0.2 x log(1 + count) on warm items "
            "(cold offset raised by the mean prior); "
            + ("'content alone' = the content half, calibrated for itself; " if pair else "")
            + "'stage-1 text path' = every item scored by its stage-1 joint text embedding"
        )
    for proto, models in report["results"].items():
        print(f"\n[{proto}] {report['protocols'][proto]}")
        metrics = [m for m in next(iter(models.values())) if m != "n"]
        print(f"  {'model':<24}" + "".join(f"{m:>13}" for m in metrics))
        for name, values in models.items():
            print(f"  {name:<24}" + "".join(f"{values[m]:>13.4f}" for m in metrics))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recstream evaluate", description=__doc__)
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="runtime folder (the launcher passes RECSTREAM_HOME)",
    )
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: latest)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    run_dir = args.run or max((args.home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    trained = load_run(run_dir, args.home / "cache")
    report = evaluate_run(trained)
    print_report(report)
    out = args.out or run_dir / "metrics.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
