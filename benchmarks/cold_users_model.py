"""Benchmark: cold users, the TRAINED model against popularity and the real local LLM.

Issue 8 item 8 asks for one table on MovieLens-100k cold users (truncated to
their first 1-3 interactions, target = the next one): popularity, the model,
LLM zero-shot / few-shot / CoT ranking and LLM rerank of the *model's* top 20.
``benchmarks/llm_real_model.py`` measured the LLM rows on a popularity+TF-IDF
candidate list because no trained model was at hand; this script supplies the
model rows, without leakage:

1. The same held-out users as ``llm_real_model.py`` (users with >= 5
   interactions, shuffled with ``random.Random(seed)``, the first ``--users``)
   are removed from training entirely (no training windows, no validation),
   and the content model (``ContentSASRec``, ``TrainConfig``'s recipe
   without the baselines: what ``recstream train --no-eval`` serves; the
   full recipe serves it paired with an ID-only SASRec) is trained on the
   other users. Popularity is counted on
   the other users too.
2. For the evaluated users (user n gets history length 1 + n % 3, in the
   same order as ``llm_real_model.py``), the model ranks the full catalogue
   (seen items excluded, the fitted cold offset applied): the ``model`` row.
3. The model's top 20 goes to the real LLM (``recstream llm-local``) through
   the project's library (``workers.llm.LLM``: cache off, one endpoint): zero-
   shot, few-shot and chain-of-thought ranking and the listwise rerank. Users
   whose target is outside the top 20 score 0 for every LLM method whatever
   it answers, so they are counted but not sent (as in llm_real_model.py).
   A failed call falls back to the model's order, as the served ladder does.

Run (the local model must be serving; training uses one thread)::

    recstream llm-local up --port 18088
    .venv-train/bin/python benchmarks/cold_users_model.py --train-only   # optional: cache the model
    .venv/bin/python benchmarks/cold_users_model.py --port 18088 --minutes 35

Training needs torch (``.venv-train``); the LLM part needs the worker
environment (``.venv``). So the script trains in ``.venv-train`` (re-executing
itself there when torch is missing) and saves the per-user model rankings to
``--rankings``; the LLM part reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

K = 10
TOP = 20
LLM_METHODS = ("llm_zero_shot", "llm_few_shot", "llm_cot", "llm_rerank_model_top20")


def held_out_users(seqs: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """The evaluation order of llm_real_model.py (same users, same order)."""
    users = sorted((u for u, s in seqs.items() if len(s) >= 5), key=int)
    random.Random(seed).shuffle(users)
    return users[:n]


def user_sequences(folder: Path) -> dict[str, list[str]]:
    """Each user's items by (timestamp, item id): llm_real_model.py's order."""
    rows: dict[str, list[tuple[float, str]]] = {}
    with (folder / "ml-100k.inter").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            user, item, _rating, ts = line.split("\t")
            rows.setdefault(user, []).append((float(ts), item))
    return {u: [i for _, i in sorted(r, key=lambda x: (x[0], int(x[1])))] for u, r in rows.items()}


# --- part 1: train without the held-out users and rank (torch, .venv-train) ----


def train_and_rank(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from workers.training.data import fetch_ml100k
    from workers.training.evaluate import item_tables
    from workers.training.train import (
        TrainConfig,
        Trained,
        fit_calibration,
        left_pad,
        load_split,
        text_table,
        train_content,
    )

    cache_dir = Path(os.environ.get("RECSTREAM_HOME", ROOT / ".local")) / "cache"
    folder = fetch_ml100k(cache_dir)
    seqs = user_sequences(folder)
    held = held_out_users(seqs, args.users, args.seed)

    cfg = TrainConfig(threads=1, baselines=False)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(1)
    data = load_split(cfg, cache_dir)
    # The dataset numbers users in order of first appearance in the file.
    user_index: dict[str, int] = {}
    with (folder / "ml-100k.inter").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            user_index.setdefault(line.split("\t", 1)[0], len(user_index))
    for raw in held:
        u = user_index[raw]
        data.train_seqs[u] = []  # no training window
        data.valid[u] = 0  # not a validation user (early stopping, calibration)
        data.test[u] = 0
    started = time.monotonic()
    hist: dict[str, Any] = {}
    text = text_table(cfg, data)
    model = train_content(cfg, data, text, hist)
    fusion = fit_calibration(cfg, data, model, hist=hist)
    train_s = time.monotonic() - started
    trained = Trained(cfg, data, text, None, None, model, None, hist, fusion)  # type: ignore[arg-type]
    item_input, item_joint = item_tables(trained)
    index = {raw: i + 1 for i, raw in enumerate(data.item_raw_ids)}
    raw_of = {i + 1: raw for i, raw in enumerate(data.item_raw_ids)}

    rankings: list[dict[str, Any]] = []
    with torch.no_grad():
        for n, user in enumerate(held):
            t = 1 + n % 3
            history, target = seqs[user][:t], seqs[user][t]
            ids = [index[i] for i in history]
            u = model.sequence(left_pad([ids], cfg.max_len), item_input)[:, -1, :]
            scores = (u @ item_joint[:, :-1].T + item_joint[:, -1])[0]
            scores[0] = -torch.inf
            scores[ids] = -torch.inf
            order = torch.argsort(scores, descending=True)[: TOP * 5].tolist()
            rankings.append(
                {
                    "user": user,
                    "history_len": t,
                    "history": history,
                    "target": target,
                    "model_top": [raw_of[i] for i in order],
                }
            )
    return {
        "held_out_users": len(held),
        "train_seconds": round(train_s, 1),
        "config": {"seed": cfg.seed, "split_seed": cfg.split_seed, "id_dropout": cfg.id_dropout},
        "fusion": fusion,
        "calibration": hist.get("calibration"),
        "rankings": rankings,
    }


# --- part 2: the table and the LLM rows (.venv) --------------------------------


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from benchmarks.llm_real_model import boot_ci as _boot_ci

    def boot_ci(values: list[float]) -> list[float]:
        return [round(x, 4) for x in _boot_ci(values)]

    table: dict[str, Any] = {}
    for m in ("popularity", "model", *LLM_METHODS):
        values = [r[m] for r in rows if r.get(m) is not None]
        table[m] = {
            "n": len(values),
            "hr@10": round(statistics.fmean(v[0] for v in values), 4) if values else None,
            "hr@10_ci95": boot_ci([v[0] for v in values]),
            "ndcg@10": round(statistics.fmean(v[1] for v in values), 4) if values else None,
            "ndcg@10_ci95": boot_ci([v[1] for v in values]),
        }
        if m in LLM_METHODS:
            diffs = [r[m][1] - r["model"][1] for r in rows if r.get(m) is not None]
            table[m]["ndcg@10_minus_model"] = round(statistics.fmean(diffs), 4) if diffs else None
            table[m]["ndcg@10_minus_model_ci95"] = boot_ci(diffs)
    return table


async def llm_rows(args: argparse.Namespace, ranked: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.llm_real_model import hr_ndcg, load, local_endpoint
    from streams.replay import ml100k_folder
    from workers.llm import LLM, LLMError, LLMPool, LLMSettings, UserContext
    from workers.settings import Settings

    movies, seqs = load(ml100k_folder(Settings.from_env()))
    held = {r["user"] for r in ranked["rankings"]}
    pop = Counter(i for u, s in seqs.items() if u not in held for i in s)
    pop_order = sorted(movies, key=lambda i: (-pop[i], int(i)))
    endpoint = local_endpoint(args.port, args.call_timeout)
    settings = LLMSettings(endpoints=(endpoint,), cache_enabled=False)
    rows: list[dict[str, Any]] = []
    calls: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {m: [] for m in LLM_METHODS}
    started = time.monotonic()
    deadline = args.call_timeout * 2 + 5
    every_user: list[dict[str, Any]] = []
    budget_spent = args.no_llm
    async with LLMPool(settings) as pool:
        llm = LLM(pool, seed=args.seed)
        for n, r in enumerate(ranked["rankings"][: args.evaluate]):
            if not budget_spent and time.monotonic() - started > args.minutes * 60:
                print(f"time budget spent after {n} users", flush=True)
                budget_spent = True
            history, target = r["history"], r["target"]
            seen = set(history)
            model_top = r["model_top"]
            row: dict[str, Any] = {
                "user": r["user"],
                "history_len": r["history_len"],
                "target": target,
                "popularity": hr_ndcg([i for i in pop_order if i not in seen], target),
                "model": hr_ndcg(model_top, target),
                "target_in_model_top20": target in model_top[:TOP],
            }
            every_user.append(row)
            if budget_spent:
                continue
            if not row["target_in_model_top20"]:
                for m in args.methods:
                    row[m] = (0.0, 0.0)
                rows.append(row)
                continue
            user = UserContext(history=[movies[i].item() for i in history])
            cands = [movies[i].item() for i in model_top[:TOP]]
            styles = {
                "llm_zero_shot": "zero_shot",
                "llm_few_shot": "few_shot",
                "llm_cot": "chain_of_thought",
            }
            for method in args.methods:
                t0 = time.monotonic()
                calls[method] += 1
                try:
                    if method in styles:
                        result = await llm.rank(
                            user, cands, k=K, deadline=deadline, style=styles[method]
                        )
                    else:
                        result = await llm.rerank(user, cands, k=K, deadline=deadline)
                    row[method] = hr_ndcg(list(result.item_ids), target)
                except LLMError as exc:
                    failures[method] += 1
                    row[f"{method}_error"] = type(exc).__name__
                    row[method] = row["model"]  # the ladder serves the model's order
                latencies[method].append(time.monotonic() - t0)
            rows.append(row)
            print(
                f"user {n}: target in model top 20; "
                + ", ".join(f"{m}={row[m][0]:.0f}" for m in ("model", *args.methods)),
                flush=True,
            )
    return {
        "all_users_model_vs_popularity": {
            "users": len(every_user),
            "table": {m: v for m, v in summarise(every_user).items() if v["n"]},
        },
        "users": len(rows),
        "users_sent_to_llm": sum(bool(r["target_in_model_top20"]) for r in rows),
        "model_hr@20": round(statistics.fmean(r["target_in_model_top20"] for r in rows), 4)
        if rows
        else None,
        "llm_calls": dict(calls),
        "llm_failures_served_by_model": dict(failures),
        "llm_latency_p50_s": {
            m: round(statistics.median(v), 1) if v else None for m, v in latencies.items()
        },
        "table": summarise(rows),
        "per_user": rows,
        "wall_s": round(time.monotonic() - started, 1),
    }


def print_table(table: dict[str, Any]) -> None:
    print(f"{'method':<24}{'n':>4}{'HR@10':>8}{'95% CI':>18}{'NDCG@10':>9}{'95% CI':>18}")
    for m, row in table.items():
        print(
            f"{m:<24}{row['n']:>4}{row['hr@10'] or 0:>8.3f}{row['hr@10_ci95']!s:>18}"
            f"{row['ndcg@10'] or 0:>9.3f}{row['ndcg@10_ci95']!s:>18}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18088)
    parser.add_argument("--users", type=int, default=300, help="held out of training")
    parser.add_argument("--evaluate", type=int, default=300, help="users evaluated (in order)")
    parser.add_argument("--minutes", type=float, default=35.0, help="LLM part: stop new users")
    parser.add_argument("--call-timeout", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        type=lambda v: tuple(m for m in v.split(",") if m),
        default=LLM_METHODS,
        help=f"comma-separated LLM methods to run (default all: {','.join(LLM_METHODS)})",
    )
    parser.add_argument("--train-only", action="store_true", help="train + rank, no LLM")
    parser.add_argument("--no-llm", action="store_true", help="model and popularity rows only")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    out_dir = ROOT / "benchmarks" / "results"
    parser.add_argument(
        "--rankings", default=str(out_dir / f"cold-users-model-rankings-{day}.json")
    )
    parser.add_argument("--out", default=str(out_dir / f"cold-users-model-{day}.json"))
    args = parser.parse_args()

    rankings_path = Path(args.rankings)
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch and (args.train_only or not rankings_path.exists()):
        ranked = train_and_rank(args)
        rankings_path.write_text(json.dumps(ranked, indent=1) + "\n")
        print(f"trained in {ranked['train_seconds']} s; wrote {rankings_path}", flush=True)
        if args.train_only:
            return 0
    elif not rankings_path.exists():
        train_python = ROOT / ".venv-train" / "bin" / "python"
        print("training in .venv-train (torch) ...", flush=True)
        subprocess.run(
            [str(train_python), __file__, "--train-only", *sys.argv[1:]],
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
    ranked = json.loads(rankings_path.read_text())
    result = asyncio.run(llm_rows(args, ranked))
    out = {
        "benchmark": "cold_users_model",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores (shared)",
        "protocol": (
            "held-out users (>=5 interactions; removed from training and from popularity) "
            "truncated to their first t=1,2,3 interactions; target = interaction t+1; "
            "full-catalogue ranking, seen items excluded; LLM methods reorder the model's "
            "top 20; users whose target is outside it are counted with 0 and not sent"
        ),
        "model": {k: v for k, v in ranked.items() if k != "rankings"},
        **result,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"every evaluated user ({result['all_users_model_vs_popularity']['users']}):")
    print_table(result["all_users_model_vs_popularity"]["table"])
    print(f"paired with the LLM ({result['users']} users):")
    print_table(out["table"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
