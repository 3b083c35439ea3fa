"""``recstream bench``: one benchmark report, every figure beside its same-run baseline.

Runs the benchmark scripts of a source checkout (``benchmarks/``) one after
the other, each in its own process with a time limit, and gathers what they
measured into ``benchmarks/results/<date>-<machine>/``: ``report.json`` (all
figures, the load average around each phase, the commit), ``report.md`` and
PNG plots (interaction path against its ceiling, request latency and
throughput against offered load with the time split by stage, the LLM pool's
added latency below saturation, tokens per recommendation and the serving-path
mix per strategy, the CPU scorer).

Why an orchestrator over the scripts rather than a package: the benchmarks
start workers, fill topics and drive the LLM test server; they are scripts
that print figures (the project's convention) and are not shipped in the
distribution (contracts, workers, streams). Moving them into a package would
ship benchmark code to every worker image. So this command needs a source
checkout and says so when there is none; the plots need the optional ``bench``
extra (matplotlib), and the report is still written without it.

    recstream bench                      # all phases, default sizes
    recstream bench --quick              # smaller sizes (a smoke run)
    recstream bench --only ceiling,requests
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _phases(quick: bool, out: Path) -> dict[str, tuple[list[str], int]]:
    """phase -> (script arguments, time limit in seconds)."""
    q = quick
    return {
        "ceiling": (
            [
                *("bench_ceiling.py", "--events", "20000" if q else "40000", "--profile", "8"),
                *("--json", str(out / "ceiling.json")),
            ],
            600,
        ),
        "requests": (
            [
                *("bench_requests.py", "--events", "10000" if q else "20000"),
                *("--backlog", "1000" if q else "2000", "--rates", "25,50,100,200"),
                *("--seconds", "4" if q else "8", "--json", str(out / "requests.json")),
            ],
            900,
        ),
        "llm_pool": (
            [
                *("bench_llm_pool.py", "--calls", "200" if q else "300", "--rounds", "3"),
                *("--seconds", "3" if q else "6", "--json", str(out / "llm_pool.json")),
            ],
            600,
        ),
        "tokens": (
            [
                *("bench_tokens.py", "--limit", "1000" if q else "3000", "--new-items", "10"),
                *("--only", "all on,no cache,no select,one stage", "--out", str(out / "tokens")),
            ],
            900,
        ),
        "scorer": (
            [
                *("bench_scorer.py", "--seconds", "0.5" if q else "1.0"),
                *("--json", str(out / "scorer.json")),
            ],
            300,
        ),
    }


def _machine() -> str:
    gpu = shutil.which("nvidia-smi")
    if gpu:
        try:
            name = subprocess.run(
                [gpu, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.splitlines()[0]
            return name.strip().lower().replace(" ", "-")
        except (subprocess.SubprocessError, IndexError, OSError):
            pass
    return f"cpu-{os.cpu_count()}core"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return "unknown"


def _run_phase(name: str, args: list[str], limit: int, out: Path) -> dict[str, Any]:
    log = out / f"{name}.log"
    before = os.getloadavg()
    started = time.monotonic()
    with log.open("w") as handle:
        try:
            proc = subprocess.run(
                [sys.executable, str(BENCH / args[0]), *args[1:]],
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=limit,
                check=False,
            )
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {limit} s"
    return {
        "rc": rc,
        "wall_s": round(time.monotonic() - started, 1),
        "load_before": [round(x, 2) for x in before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "log": log.name,
    }


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# recstream bench, {report['date']} on {report['machine']}",
        "",
        f"Commit `{report['commit']}`, {report['cpus']} CPUs, Python {report['python']}. "
        "The machine is shared and was loaded during this run (load averages below, "
        "1/5/15 min); absolute figures move with the load, the ratios within one run "
        "are what to compare.",
        "",
        "| phase | result | wall s | load before | load after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, p in report["phases"].items():
        lb = "/".join(f"{x:.1f}" for x in p["load_before"])
        la = "/".join(f"{x:.1f}" for x in p["load_after"])
        lines.append(f"| {name} | rc {p['rc']} | {p['wall_s']} | {lb} | {la} |")
    c = report.get("ceiling")
    if c:
        lines += [
            "",
            "## Interaction path against its serial ceiling",
            "",
            f"{c['events']:,} rating events; apply in batches of {c['batch']}; triggers off.",
            "",
            "| measured | events/s |",
            "| --- | --- |",
            f"| raw aiokafka consume | {_fmt(c['raw_consume_eps'])} |",
            f"| codec decode + plausibility checks | {_fmt(c['decode_eps'])} |",
            f"| `UserStateStore.apply`, batches of {c['batch']}, into Redis | "
            f"{_fmt(c['apply_eps'])} |",
            f"| **serial ceiling** 1/(1/raw + 1/decode + 1/apply) | **{_fmt(c['ceiling_eps'])}** |",
            f"| **worker** `--role interactions` | **{_fmt(c['worker_eps'])}** |",
            f"| **worker / ceiling** | **{c['ratio']:.2f}** |",
            *(
                [
                    f"| worker with the role on faust's per-record stream (baseline edge) | "
                    f"{_fmt(c['worker_faust_eps'])} |",
                    f"| faust-stream worker / ceiling | {c['ratio_faust']:.2f} |",
                ]
                if "worker_faust_eps" in c
                else []
            ),
            "",
            "![interactions](interactions.png)",
        ]
        prof = c.get("worker_profile")
        if prof:
            idle = prof.pop("_idle_share_of_all_samples", None)
            lines += [
                "",
                "Where the worker's busy time goes (py-spy samples while it drains; "
                f"idle share of all samples {_fmt(idle, '.0%')}):",
                "",
                "| where | share of busy samples |",
                "| --- | --- |",
            ]
            lines += [f"| {k} | {v:.0%} |" for k, v in prof.items()]
    r = report.get("requests")
    if r:
        lines += [
            "",
            "## Request path",
            "",
            f"{r['candidates']} candidates per request, users with state from "
            f"{r['events']:,} ratings.",
            "",
            f"- throughput draining {r['backlog_requests']:,} requests: "
            f"**{_fmt(r['throughput_rps'])} requests/s**; naive per-request path in the same "
            f"run: {_fmt(r['naive_rps'])} requests/s "
            f"({r['throughput_rps'] / r['naive_rps']:.1f}x)",
            "",
            "| offered /s | answered | p50 ms | p99 ms | batch | state ms | candidates ms | "
            "score ms | edge ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["rates"]:
            m = row["stages_mean_ms"]
            lines.append(
                f"| {row['offered_rps']:.0f} | {row['answered']}/{row['sent']} | "
                f"{_fmt(row['p50_ms'], '.1f')} | {_fmt(row['p99_ms'], '.1f')} | "
                f"{_fmt(row['mean_batch'], '.1f')} | "
                + " | ".join(_fmt(m[s], ".1f") for s in ("state", "candidates", "score", "edge"))
                + " |"
            )
        lines += [
            "",
            "Stage times are means per request from each recommendation's own "
            "`timings_ms` (state reads, candidates, scoring: the handler's stages for the "
            "whole micro-batch); the edge is the rest of request -> recommendation "
            "(Kafka timestamps): faust hand-over and batching wait, decode, output store, "
            "encode, send and ack.",
            "",
            "![request latency](requests.png)",
        ]
    llm = report.get("llm_pool")
    if llm:
        b = llm["below_saturation"]
        cap = llm["capacity"]
        lines += [
            "",
            "## LLM pool's added latency",
            "",
            f"LLM TEST SERVER (not a model) at {llm['latency_ms']:g} ms per call. Capacity, "
            f"{cap['calls']} concurrent calls: bare httpx "
            f"{_fmt(cap['bare httpx']['calls_per_s'])} calls/s, pool "
            f"{_fmt(cap['LLMPool']['calls_per_s'])} calls/s (both queue at the server).",
            "",
            f"Below saturation, open loop at {b['rate_calls_per_s']:.0f} calls/s "
            f"({b['load']:.0%} of capacity), bare and pool alternating:",
            "",
            "| path | p50 ms | p99 ms | calls |",
            "| --- | --- | --- | --- |",
            f"| bare httpx | {b['bare httpx']['p50_ms']:.2f} | {b['bare httpx']['p99_ms']:.2f} | "
            f"{b['bare httpx']['calls']} |",
            f"| LLMPool | {b['LLMPool']['p50_ms']:.2f} | {b['LLMPool']['p99_ms']:.2f} | "
            f"{b['LLMPool']['calls']} |",
            f"| **added by the pool** | **{b['added_p50_ms']:+.2f}** | "
            f"**{b['added_p99_ms']:+.2f}** (target <= 5) | |",
        ]
        cpu = llm.get("cpu_ms_per_call")
        if cpu:
            lines += [
                "",
                f"The pool's own work, without queueing: client CPU per call, calls one at a "
                f"time, bare httpx {cpu['bare httpx']:.2f} ms, LLMPool {cpu['LLMPool']:.2f} ms "
                f"(**{cpu['LLMPool'] - cpu['bare httpx']:+.2f} ms** per call).",
            ]
        lines += [
            "",
            "![llm pool](llm_pool.png)",
        ]
    t = report.get("tokens")
    if t:
        lines += [
            "",
            "## Tokens per recommendation and the serving-path mix",
            "",
            f"{t.get('limit', '?')} ratings per arm through the roles' handlers, LLM TEST "
            "SERVER; baseline: `all on`.",
            "",
            "| arm | LLM calls | tokens | lists | tokens/list | LLM-routed lists | "
            "cold rungs | cache hit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for arm, row in t.get("arms", {}).items():
            rungs = ", ".join(f"{k} {v}" for k, v in sorted(row["llm_cold_rungs"].items()))
            lines.append(
                f"| {arm} | {row['llm_calls']} | {row['tokens']:,} | {row['lists']} | "
                f"{row['tokens_per_list']:.2f} | {row['llm_routed_lists']} | {rungs or '-'} | "
                f"{_fmt(row['cache_hit_rate'], '.2f')} |"
            )
        lines += ["", "![tokens](tokens.png)"]
    s = report.get("scorer")
    if s:
        lines += [
            "",
            f"## Scorer (ONNX, {s['provider']})",
            "",
            report["gpu_note"],
            "",
            "| B users | C candidates | users/s | candidate scores/s | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {row['B']} | {row['C']} | {row['users_per_s']:,.0f} | "
            f"{row['candidate_scores_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |"
            for row in s["results"]
        ]
        lines += ["", "![scorer](scorer.png)"]
    return "\n".join(lines) + "\n"


def _plots(report: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    c = report.get("ceiling")
    if c:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        labels = ["raw consume", "decode", "apply x500", "serial ceiling", "worker"]
        keys = ["raw_consume_eps", "decode_eps", "apply_eps", "ceiling_eps", "worker_eps"]
        colors = ["#bbb", "#bbb", "#bbb", "#4a7", "#36c"]
        if "worker_faust_eps" in c:
            labels.append("worker, faust stream")
            keys.append("worker_faust_eps")
            colors.append("#c96")
        ax.barh(labels, [c[k] for k in keys], color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("events/s (log)")
        ax.set_title(f"interaction path: worker / ceiling = {c['ratio']:.2f}")
        for i, k in enumerate(keys):
            ax.text(c[k], i, f" {c[k]:,.0f}", va="center", fontsize=8)
        save(fig, "interactions.png")
    r = report.get("requests")
    if r and r.get("rates"):
        rows = r["rates"]
        offered = [x["offered_rps"] for x in rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        a1.plot(offered, [x["p50_ms"] for x in rows], "o-", label="p50")
        a1.plot(offered, [x["p99_ms"] for x in rows], "o-", label="p99")
        a1.set_xlabel("offered requests/s")
        a1.set_ylabel("request -> recommendation, ms")
        a1.set_title(f"latency vs load (backlog: {r['throughput_rps']:,.0f}/s)")
        a1.legend()
        bottom = [0.0] * len(rows)
        for stage in ("state", "candidates", "score", "edge"):
            vals = [x["stages_mean_ms"][stage] or 0.0 for x in rows]
            a2.bar([str(int(o)) for o in offered], vals, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        a2.set_xlabel("offered requests/s")
        a2.set_ylabel("mean ms per request")
        a2.set_title("where the time goes")
        a2.legend(fontsize=8)
        save(fig, "requests.png")
    llm = report.get("llm_pool")
    if llm:
        b = llm["below_saturation"]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = [0, 1]
        w = 0.35
        for i, name in enumerate(("bare httpx", "LLMPool")):
            ax.bar(
                [v + (i - 0.5) * w for v in x],
                [b[name]["p50_ms"], b[name]["p99_ms"]],
                w,
                label=name,
            )
        ax.set_xticks(x, ["p50", "p99"])
        ax.set_ylabel("ms")
        ax.set_title(
            f"LLM pool at {b['rate_calls_per_s']:.0f} calls/s: "
            f"+{b['added_p50_ms']:.1f} / +{b['added_p99_ms']:.1f} ms"
        )
        ax.legend()
        save(fig, "llm_pool.png")
    t = report.get("tokens")
    if t and t.get("arms"):
        arms = list(t["arms"])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
        a1.bar(arms, [t["arms"][a]["tokens_per_list"] for a in arms], color="#36c")
        a1.set_ylabel("LLM tokens per recommendation list")
        a1.set_title("tokens per recommendation (baseline: all on)")
        a1.tick_params(axis="x", rotation=20)
        # Every list of the arm: those the policy never sent to the LLM (model,
        # popular or fresh), then the LLM-routed ones by the rung that answered.
        rungs = sorted({k for a in arms for k in t["arms"][a]["llm_cold_rungs"]})
        mix = {
            "no LLM (model/popular/fresh)": [
                float(t["arms"][a]["lists"] - t["arms"][a]["llm_routed_lists"]) for a in arms
            ]
        }
        for rung in rungs:
            mix[f"LLM route: {rung}"] = [
                float(t["arms"][a]["llm_cold_rungs"].get(rung, 0)) for a in arms
            ]
        bottom = [0.0] * len(arms)
        totals = [float(max(t["arms"][a]["lists"], 1)) for a in arms]
        for label, vals in mix.items():
            share = [100 * v / n for v, n in zip(vals, totals, strict=True)]
            a2.bar(arms, share, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, share, strict=True)]
        a2.set_ylabel("% of recommendation lists")
        a2.set_title("serving-path mix")
        a2.tick_params(axis="x", rotation=20)
        a2.legend(fontsize=7, loc="lower right")
        save(fig, "tokens.png")
    s = report.get("scorer")
    if s:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for cands in sorted({row["C"] for row in s["results"]}):
            rows = [row for row in s["results"] if row["C"] == cands]
            ax.plot([row["B"] for row in rows], [row["users_per_s"] for row in rows], "o-")
            ax.lines[-1].set_label(f"C={cands}")
        ax.set_xscale("log")
        ax.set_xlabel("users per batch (B)")
        ax.set_ylabel("users/s")
        ax.set_title(f"ONNX scorer, {s['provider']}")
        ax.legend()
        save(fig, "scorer.png")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recstream bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default="", help="comma-separated phases (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only rebuild report.md and the plots of this folder from its report.json",
    )
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((args.render / "report.json").read_text())
        saved["plots"] = _plots(json.loads(json.dumps(saved)), args.render)
        (args.render / "report.json").write_text(json.dumps(saved, indent=2) + "\n")
        (args.render / "report.md").write_text(_markdown(json.loads(json.dumps(saved))))
        print(f"rendered {args.render / 'report.md'} ({len(saved['plots'])} plots)")
        return 0
    if not BENCH.is_dir():
        print(
            "recstream bench: needs a source checkout (benchmarks/ is not part of the "
            "installed distribution)",
            file=sys.stderr,
        )
        return 2
    date = dt.datetime.now(dt.UTC).date().isoformat()
    machine = _machine()
    out = args.out or BENCH / "results" / f"{date}-{machine}"
    out.mkdir(parents=True, exist_ok=True)
    phases = _phases(args.quick, out)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(only) - set(phases)
    if unknown:
        print(f"recstream bench: unknown phases {sorted(unknown)}; known: {list(phases)}")
        return 2
    report: dict[str, Any] = {
        "date": date,
        "machine": machine,
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "quick": args.quick,
        "phases": {},
        "gpu_note": (
            "No GPU was lent to this run: the figures are the CPU scorer's "
            "(onnxruntime CPUExecutionProvider). The GPU figures come from the prepared "
            "`benchmarks/gpu_check.sh` when a GPU is lent."
            if machine.startswith("cpu-")
            else f"GPU present ({machine})."
        ),
    }
    for name, (script_args, limit) in phases.items():
        if only and name not in only:
            continue
        print(f"[{name}] {' '.join(script_args)}", flush=True)
        report["phases"][name] = _run_phase(name, script_args, limit, out)
        print(f"[{name}] {report['phases'][name]}", flush=True)
    for name, path in (
        ("ceiling", out / "ceiling.json"),
        ("requests", out / "requests.json"),
        ("llm_pool", out / "llm_pool.json"),
        ("tokens", out / "tokens" / "result.json"),
        ("scorer", out / "scorer.json"),
    ):
        if name in report["phases"]:
            report[name] = _load(path)
    report["plots"] = _plots(json.loads(json.dumps(report)), out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(json.loads(json.dumps(report))))
    print(f"wrote {out / 'report.md'} ({len(report['plots'])} plots)")
    failed = [n for n, p in report["phases"].items() if p["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
