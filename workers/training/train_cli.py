"""``recstream train``: the command line of training (runs in the training venv).

Kept apart from :mod:`workers.training.train` (the training library) so that
training and evaluation import each other's library code one way only: this
module uses both; the evaluation uses the training library.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import fields
from pathlib import Path

from workers.training import DEFAULT_HOME
from workers.training.evaluate import evaluate_run, print_report
from workers.training.train import TrainConfig, save_run, train_all

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recstream train", description=__doc__)
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="runtime folder (the launcher passes RECSTREAM_HOME)",
    )
    parser.add_argument("--version", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--tiny", action="store_true", help="seconds-long synthetic run (tests)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default 42)")
    parser.add_argument(
        "--split-seed", type=int, default=None, help="seed of the cold-item split (default 42)"
    )
    parser.add_argument(
        "--cold-fraction",
        type=float,
        default=None,
        help="share of items held out as cold (default 0.15; 0 = the standard protocol)",
    )
    parser.add_argument("--id-dropout", type=float, default=None, help="ablation knob")
    parser.add_argument("--no-text", action="store_true", help="ablation: ID-only model")
    parser.add_argument(
        "--last-window", action="store_true", help="ablation: one window per user (old recipe)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any TrainConfig field (experiments), e.g. --set sas_lr=0.002",
    )
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the evaluation report, the baselines (SASRec, BPR-MF) and stage 1 "
        "(the joint space, not exported). Without the SASRec the content model is "
        "served alone, not the pair (the demo's shorter recipe)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.tiny() if args.tiny else TrainConfig()
    if args.seed is not None:
        cfg.seed = args.seed
    if args.split_seed is not None:
        cfg.split_seed = args.split_seed
    if args.cold_fraction is not None:
        cfg.cold_fraction = args.cold_fraction
    if args.id_dropout is not None:
        cfg.id_dropout = args.id_dropout
    cfg.baselines = cfg.baselines and not args.no_eval
    if args.no_eval:
        # Stage 1 is kept in the run's checkpoint but not exported; the
        # config records 0 epochs, so `recstream evaluate` leaves its row out.
        cfg.s1_epochs = 0
    cfg.use_text = cfg.use_text and not args.no_text
    cfg.all_windows = cfg.all_windows and not args.last_window
    if args.threads is not None:
        cfg.threads = args.threads
    types = {f.name: type(getattr(cfg, f.name)) for f in fields(TrainConfig)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types:
            parser.error(f"--set: no TrainConfig field {key!r}")
        kind = types[key]
        setattr(cfg, key, value.lower() in {"1", "true", "yes"} if kind is bool else kind(value))
    started = time.perf_counter()
    trained = train_all(cfg, args.home / "cache")
    run_dir = args.home / "runs" / args.version
    save_run(trained, run_dir)
    print(f"trained in {time.perf_counter() - started:.1f}s -> {run_dir}")
    if not args.no_eval:
        report = evaluate_run(trained)
        (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
