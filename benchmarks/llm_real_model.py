"""Benchmark: the REAL local model (recstream llm-local) through the project's LLM library.

What it measures, on MovieLens-100k cold users, with every call going through
``workers.llm.LLM`` / ``LLMPool`` (cache off, one endpoint, 1 CPU thread):

1. Real-model figures per role: JSON validity of the raw answers (before the
   library's repair), schema validity (the role parser accepts the first
   answer), final success (after the library's one repair), hallucinated ids
   (ids in a raw answer's ``ranking``/``evidence`` outside the ids the prompt
   allowed, counted before the library filters them), grounding pass rate of
   explanations (``workers.explain.check_grounding`` with the same arguments
   the explain role uses), p50/p99 latency per role.
2. The cold-user table: users (held out from popularity counts) truncated to
   their first 1-3 interactions (1, 2, 3 in turn); the target is the next
   interaction. HR@10 / NDCG@10 over the full catalogue (items the user has
   seen excluded) for:
   - popularity (counts from the other users),
   - pop+text: popularity blended with TF-IDF cosine between the user's
     items and each item's title + genres (the stand-in for the trained
     model: no exported model exists here, see the JSON's "model_note"),
   - LLM zero-shot / few-shot / chain-of-thought ranking of pop+text's top 20
     (candidates shown in pop+text order; ids the model leaves out keep
     that order, as the library does),
   - LLM listwise rerank of pop+text's top 20 (the library's rerank: shuffled
     order, ``--permutations`` Borda-aggregated).
   All methods see the same users (paired); 95% intervals are bootstrap
   percentile intervals over users, and the LLM-minus-pop+text differences
   are paired bootstrap intervals. Since the LLM methods only reorder the top
   20, a user whose target is outside it scores 0 for all of them whatever
   the model says: such users count in the table but are not sent to the
   LLM (``--call-all`` sends them anyway). So the real-model figures come
   from the users whose target is in the top 20.

The server must be running (``recstream llm-local up --port P``)::

    .venv/bin/python benchmarks/llm_real_model.py --port 18088 --minutes 45

The run stops starting new users after ``--minutes`` and writes
benchmarks/results/llm-real-model-<date>.json (also after every user, so a
killed run leaves its partial figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.replay import ml100k_folder  # noqa: E402
from workers import quality  # noqa: E402
from workers.explain import check_grounding  # noqa: E402
from workers.llm import (  # noqa: E402
    LLM,
    EndpointSettings,
    Item,
    LLMError,
    LLMPool,
    LLMSettings,
    Turn,
    UserContext,
)
from workers.llm.parsing import extract_json  # noqa: E402
from workers.llm.pool import Completion  # noqa: E402
from workers.settings import Settings  # noqa: E402

T = TypeVar("T")
K = 10
TOP = 20
MODEL_NAME = "qwen2.5-1.5b-instruct-q4_k_m"
LLM_METHODS = ("llm_zero_shot", "llm_few_shot", "llm_cot", "llm_rerank_top20")


# --- data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Movie:
    id: str
    title: str
    year: str
    genres: tuple[str, ...]

    def item(self) -> Item:
        # genres only: every prompt token costs ~0.08 s on one CPU thread
        return Item(id=self.id, title=self.title, attributes={"genres": ", ".join(self.genres)})


def load(folder: Path) -> tuple[dict[str, Movie], dict[str, list[str]]]:
    movies: dict[str, Movie] = {}
    with (folder / "ml-100k.item").open(encoding="utf-8", errors="replace") as handle:
        next(handle)
        for line in handle:
            parts = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
            item, title, year, genres = (p.strip() for p in parts)
            movies[item] = Movie(item, title or f"item {item}", year, tuple(genres.split()))
    rows: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with (folder / "ml-100k.inter").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            user, item, _rating, ts = line.split("\t")
            rows[user].append((float(ts), item))
    seqs = {u: [i for _, i in sorted(r, key=lambda x: (x[0], int(x[1])))] for u, r in rows.items()}
    return movies, seqs


_TOKEN = re.compile(r"[a-z0-9']+")


class TextIndex:
    """TF-IDF over title words + genres (genres weighted x2), L2-normalised."""

    def __init__(self, movies: dict[str, Movie]) -> None:
        docs = {m.id: self._terms(m) for m in movies.values()}
        df = Counter(t for terms in docs.values() for t in set(terms))
        n = len(docs)
        self.vec: dict[str, dict[str, float]] = {}
        for mid, terms in docs.items():
            tf = Counter(terms)
            v = {t: c * math.log(1 + n / df[t]) for t, c in tf.items()}
            norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
            self.vec[mid] = {t: x / norm for t, x in v.items()}

    @staticmethod
    def _terms(m: Movie) -> list[str]:
        words = [w for w in _TOKEN.findall(m.title.lower()) if len(w) > 2]
        return words + [f"g:{g.lower()}" for g in m.genres] * 2

    def profile(self, items: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for i in items:
            for t, x in self.vec[i].items():
                out[t] += x
        norm = math.sqrt(sum(x * x for x in out.values())) or 1.0
        return {t: x / norm for t, x in out.items()}

    def cosine(self, profile: dict[str, float], item: str) -> float:
        return sum(profile.get(t, 0.0) * x for t, x in self.vec[item].items())


def local_endpoint(port: int, call_timeout: float) -> EndpointSettings:
    """The local model on loopback: one call at a time, no retries, no breaker."""
    return EndpointSettings(
        name="local",
        base_url=f"http://127.0.0.1:{port}/v1",
        model=MODEL_NAME,
        rpm=0,
        tpm=0,
        concurrency=1,
        read_timeout_s=call_timeout,
        max_attempts=1,
        breaker_failures=1000,
    )


def hr_ndcg(ranked: Sequence[str], target: str, k: int = K) -> tuple[float, float]:
    top = list(ranked[:k])
    if target not in top:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(top.index(target) + 2)


def boot_ci(values: Sequence[float], *, reps: int = 2000, seed: int = 7) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- recording raw answers ----------------------------------------------------


@dataclass
class Call:
    role: str
    seconds: float
    raw: list[str] = field(default_factory=list)
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Recorder:
    """Wraps ``pool.complete`` to keep each call's raw answers and latency."""

    def __init__(self, pool: LLMPool) -> None:
        self.calls: list[Call] = []
        self._pending: list[Call] = []
        original = pool.complete

        async def complete(request: Any, *, deadline: Any, parse: Callable[[Completion], T]) -> Any:
            call = Call(role=request.role, seconds=0.0)

            def recording_parse(c: Completion) -> T:
                call.raw.append(c.content)
                return parse(c)

            start = time.monotonic()
            try:
                value, usage = await original(request, deadline=deadline, parse=recording_parse)
                call.ok = True
                call.prompt_tokens, call.completion_tokens = (
                    usage.prompt_tokens,
                    usage.completion_tokens,
                )
                return value, usage
            except LLMError as exc:
                call.error = type(exc).__name__
                raise
            finally:
                call.seconds = time.monotonic() - start
                self.calls.append(call)
                self._pending.append(call)

        pool.complete = complete  # type: ignore[method-assign]

    def take(self) -> list[Call]:
        out, self._pending = self._pending, []
        return out


def raw_json(raw: str) -> dict[str, Any] | None:
    try:
        doc = extract_json(raw)
    except Exception:  # any failure means "not a JSON object"
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class RoleStats:
    answers: int = 0
    json_valid: int = 0
    calls: int = 0
    first_try_valid: int = 0
    final_ok: int = 0
    latencies: list[float] = field(default_factory=list)
    ids_returned: int = 0
    ids_hallucinated: int = 0
    answers_with_hallucination: int = 0
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)

    def add(self, calls: Sequence[Call], allowed: set[str] | None, id_key: str) -> None:
        """``calls``: the pool calls of one library call (the 2nd is the repair)."""
        self.calls += 1
        if calls and calls[0].ok:
            self.first_try_valid += 1
        if calls and calls[-1].ok:
            self.final_ok += 1
        for c in calls:
            self.latencies.append(c.seconds)
            if c.ok:
                self.prompt_tokens.append(c.prompt_tokens)
                self.completion_tokens.append(c.completion_tokens)
            for raw in c.raw:
                self.answers += 1
                doc = raw_json(raw)
                if doc is None:
                    continue
                self.json_valid += 1
                if allowed is None:
                    continue
                ids = doc.get(id_key)
                ids = [str(i) for i in ids] if isinstance(ids, list) else []
                bad = [i for i in ids if i not in allowed]
                self.ids_returned += len(ids)
                self.ids_hallucinated += len(bad)
                self.answers_with_hallucination += bool(bad)

    def summary(self) -> dict[str, Any]:
        return {
            "library_calls": self.calls,
            "raw_answers": self.answers,
            "json_validity": _rate(self.json_valid, self.answers),
            "first_answer_accepted": _rate(self.first_try_valid, self.calls),
            "success_after_repair": _rate(self.final_ok, self.calls),
            "ids_returned": self.ids_returned,
            "hallucinated_id_rate": _rate(self.ids_hallucinated, self.ids_returned),
            "answers_with_hallucinated_id": _rate(self.answers_with_hallucination, self.answers),
            "latency_p50_s": round(pct(self.latencies, 0.5), 2),
            "latency_p99_s": round(pct(self.latencies, 0.99), 2),
            "latency_n": len(self.latencies),
            "prompt_tokens_mean": _mean(self.prompt_tokens),
            "completion_tokens_mean": _mean(self.completion_tokens),
        }


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _mean(v: Sequence[float]) -> float | None:
    return round(statistics.fmean(v), 1) if v else None


# --- the run --------------------------------------------------------------------

DIALOGUES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "I loved Toy Story, something funny for the whole family please"),),
    (("user", "No horror. I want a clever sci-fi film, like Star Wars but older"),),
    (
        ("user", "Recommend a romantic comedy"),
        ("assistant", "Do you prefer classics or recent ones?"),
        ("user", "Classics, and nothing with Sleepless in Seattle please, I disliked it"),
    ),
    (("user", "A dark crime thriller, not too long, I liked Fargo"),),
    (("user", "Something with music and dancing for my kids, no violence"),),
    (("user", "I'm in the mood for a war drama, but not Schindler's List again"),),
)


@dataclass
class ColdRankings:
    """The non-LLM rankings of the cold-user protocol (deterministic given the seed)."""

    movies: dict[str, Movie]
    seqs: dict[str, list[str]]
    eval_users: list[str]
    pop: Counter[str]
    pop_order: list[str]
    text: TextIndex
    text_weight: float

    @classmethod
    def build(
        cls, movies: dict[str, Movie], seqs: dict[str, list[str]], args: argparse.Namespace
    ) -> ColdRankings:
        rng = random.Random(args.seed)
        users = sorted((u for u, s in seqs.items() if len(s) >= 5), key=int)
        rng.shuffle(users)
        eval_users = users[: args.users]
        held = set(eval_users)
        pop = Counter(i for u, s in seqs.items() if u not in held for i in s)
        pop_order = sorted(movies, key=lambda i: (-pop[i], int(i)))
        return cls(movies, seqs, eval_users, pop, pop_order, TextIndex(movies), args.text_weight)

    def of(self, n: int, user: str) -> tuple[list[str], str, list[str], list[str]]:
        """(history, target, popularity ranking, pop_text ranking) of the n-th user."""
        t = 1 + n % 3
        history, target = self.seqs[user][:t], self.seqs[user][t]
        seen = set(history)
        prof = self.text.profile(history)
        pop_rank = [i for i in self.pop_order if i not in seen]
        max_log = math.log1p(max(self.pop.values()))

        def blend(i: str) -> float:
            return float(
                math.log1p(self.pop[i]) / max_log + self.text_weight * self.text.cosine(prof, i)
            )

        pt_rank = sorted(pop_rank, key=lambda i: (-blend(i), int(i)))
        return history, target, pop_rank, pt_rank


def served_list(llm_ids: Sequence[str], pt_rank: Sequence[str]) -> list[str]:
    """The whole list as served: the LLM's top k, then pop_text's order (uncut MRR)."""
    head = list(llm_ids)
    taken = set(head)
    return head + [i for i in pt_rank if i not in taken]


def position(ranked: Sequence[str], target: str) -> int:
    """1-based position of ``target`` in ``ranked`` (len + 1 when absent)."""
    return ranked.index(target) + 1 if target in ranked else len(ranked) + 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    movies, seqs = load(ml100k_folder(Settings.from_env()))
    titles = {m.id: m.title for m in movies.values()}
    by_title = {m.title.lower(): m for m in movies.values()}
    cold = ColdRankings.build(movies, seqs, args)
    eval_users = cold.eval_users

    endpoint = local_endpoint(args.port, args.call_timeout)
    settings = LLMSettings(
        endpoints=(endpoint,), cache_enabled=False, rerank_permutations=args.permutations
    )
    stats: dict[str, RoleStats] = defaultdict(RoleStats)
    grounding: list[dict[str, Any]] = []
    per_user: list[dict[str, Any]] = []
    shapes: dict[str, Any] = {}
    started = time.monotonic()
    out_path = Path(args.out)

    def snapshot(done: bool) -> dict[str, Any]:
        return summarise(args, per_user, stats, grounding, shapes, started, done)

    async with LLMPool(settings) as pool:
        rec = Recorder(pool)
        llm = LLM(pool, seed=args.seed)
        deadline = args.call_timeout * 2 + 5

        async def one(role_key: str, allowed: set[str] | None, id_key: str, coro: Any) -> Any:
            try:
                value = await coro
            except LLMError as exc:
                value = exc
            stats[role_key].add(rec.take(), allowed, id_key)
            return value

        # extract_features and extract_preferences: shapes and latency
        for mid in args.feature_items.split(","):
            f = await one(
                "extract_features",
                None,
                "",
                llm.extract_features(movies[mid].item(), deadline=deadline),
            )
            shapes.setdefault("extract_features", []).append(
                {"item": titles[mid], "result": _shape(f)}
            )
        for dialogue in DIALOGUES[: args.dialogues]:
            mentioned = [
                m.item() for t, m in by_title.items() if len(t) > 4 and t in dialogue[-1][1].lower()
            ][:4]
            p = await one(
                "extract_preferences",
                {i.id for i in mentioned},
                "liked_items",
                llm.extract_preferences(
                    [Turn(r, t) for r, t in dialogue], deadline=deadline, mentioned_items=mentioned
                ),
            )
            shapes.setdefault("extract_preferences", []).append(
                {"dialogue": dialogue[-1][1], "mentioned": [i.id for i in mentioned], **_shape(p)}
            )
        print(f"features/preferences done in {time.monotonic() - started:.0f}s", flush=True)

        llm_users = 0
        for n, user in enumerate(eval_users):
            if time.monotonic() - started > args.minutes * 60:
                print(f"time budget spent after {n} users", flush=True)
                break
            history, target, pop_rank, pt_rank = cold.of(n, user)
            t = len(history)
            top = pt_rank[:TOP]
            allowed = set(top)
            cands = [movies[i].item() for i in top]
            hist = UserContext(history=[movies[i].item() for i in history])
            row: dict[str, Any] = {
                "user": user,
                "history_len": t,
                "target": target,
                "target_in_top20": target in allowed,
            }
            row["popularity"] = hr_ndcg(pop_rank, target)
            row["pop_text"] = hr_ndcg(pt_rank, target)
            # Uncut positions (for MRR); an LLM method's list is its top k, then pop_text's.
            row["popularity_rank"] = position(pop_rank, target)
            row["pop_text_rank"] = position(pt_rank, target)
            row["pop_text_hr20"] = float(target in allowed)
            row["llm_called"] = target in allowed or args.call_all
            if not row["llm_called"]:
                # LLM methods only reorder pop_text's top 20: without the target in
                # it every one of them scores 0 whatever it answers; no call needed.
                for method in LLM_METHODS:
                    row[method] = (0.0, 0.0)
                    row[f"{method}_rank"] = row["pop_text_rank"]
                per_user.append(row)
                continue
            llm_users += 1
            for method, style in (
                ("llm_zero_shot", "zero_shot"),
                ("llm_few_shot", "few_shot"),
                ("llm_cot", "chain_of_thought"),
            ):
                r = await one(
                    method,
                    allowed,
                    "ranking",
                    llm.rank(hist, cands, k=K, deadline=deadline, style=style),
                )
                row[method] = hr_ndcg(r.item_ids, target) if not isinstance(r, LLMError) else None
                if isinstance(r, LLMError):
                    row[f"{method}_error"] = type(r).__name__
                else:
                    row[f"{method}_rank"] = position(served_list(r.item_ids, pt_rank), target)
            r = await one(
                "llm_rerank_top20",
                allowed,
                "ranking",
                llm.rerank(hist, cands, k=K, deadline=deadline * args.permutations),
            )
            row["llm_rerank_top20"] = (
                hr_ndcg(r.item_ids, target) if not isinstance(r, LLMError) else None
            )
            if not isinstance(r, LLMError):
                row["llm_rerank_top20_rank"] = position(served_list(r.item_ids, pt_rank), target)
            if llm_users <= args.explain_users:
                item = movies[top[0]]
                evidence = [movies[i].item() for i in history]
                e = await one(
                    "explain",
                    {item.id, *history},
                    "evidence",
                    llm.explain(hist, item.item(), evidence, deadline=deadline),
                )
                if not isinstance(e, LLMError):
                    check = check_grounding(
                        e.text,
                        allowed_titles=[item.title, *(titles[i] for i in history)],
                        allowed_ids=[item.id, *history],
                        catalog_titles=titles.values(),
                    )
                    grounding.append(
                        {
                            "item": item.title,
                            "history": [titles[i] for i in history],
                            "text": e.text,
                            "evidence_ids": list(e.evidence_ids),
                            "passed": check.passed,
                            "problem": check.problem,
                        }
                    )
            per_user.append(row)
            elapsed = time.monotonic() - started
            print(f"user {n + 1} ({user}, t={t}) done at {elapsed:.0f}s: {_brief(row)}", flush=True)
            write(out_path, snapshot(False))
    result = snapshot(True)
    write(out_path, result)
    return result


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _shape(value: Any) -> dict[str, Any]:
    if isinstance(value, LLMError):
        return {"error": type(value).__name__, "detail": str(value)[:200]}
    d = {k: v for k, v in vars(value).items() if k != "usage"}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _brief(row: dict[str, Any]) -> str:
    keys = ("popularity", "pop_text", *LLM_METHODS)
    return " ".join(f"{k}={'-' if row.get(k) is None else int(row[k][0])}" for k in keys)


def summarise(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    stats: dict[str, RoleStats],
    grounding: list[dict[str, Any]],
    shapes: dict[str, Any],
    started: float,
    done: bool,
) -> dict[str, Any]:
    methods = ("popularity", "pop_text", *LLM_METHODS)
    table: dict[str, Any] = {}
    for m in methods:
        vals = [r[m] for r in rows if r.get(m) is not None]
        hr = [v[0] for v in vals]
        nd = [v[1] for v in vals]
        table[m] = {
            "n": len(vals),
            "hr@10": round(statistics.fmean(hr), 4) if hr else None,
            "hr@10_ci95": [round(x, 4) for x in boot_ci(hr)],
            "ndcg@10": round(statistics.fmean(nd), 4) if nd else None,
            "ndcg@10_ci95": [round(x, 4) for x in boot_ci(nd)],
        }
    for m in LLM_METHODS:
        # As served: a failed LLM call falls back to the model's (pop_text's) order.
        served = [r[m] if r.get(m) is not None else r["pop_text"] for r in rows]
        table[m]["failed_calls"] = sum(r.get(m) is None for r in rows)
        table[m]["served_with_fallback"] = {
            "n": len(served),
            "hr@10": round(statistics.fmean(v[0] for v in served), 4) if served else None,
            "hr@10_ci95": [round(x, 4) for x in boot_ci([v[0] for v in served])],
            "ndcg@10": round(statistics.fmean(v[1] for v in served), 4) if served else None,
            "ndcg@10_ci95": [round(x, 4) for x in boot_ci([v[1] for v in served])],
        }
        pairs = [(r[m][1], r["pop_text"][1]) for r in rows if r.get(m) is not None]
        diffs = [a - b for a, b in pairs]
        table[m]["ndcg@10_minus_pop_text"] = round(statistics.fmean(diffs), 4) if diffs else None
        table[m]["ndcg@10_minus_pop_text_ci95"] = [round(x, 4) for x in boot_ci(diffs)]
    for m in methods:
        table[m].update(rank_metrics(rows, m))
    hr20 = [r["pop_text_hr20"] for r in rows]
    passed = sum(g["passed"] for g in grounding)
    return {
        "benchmark": "llm_real_model",
        "complete": done,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (recstream llm-local, node-llama-cpp 3.21.1)",
        "threads": 1,
        "machine": f"{os.cpu_count()} cores (shared)",
        "wall_s": round(time.monotonic() - started, 1),
        "args": vars(args),
        "model_note": (
            "no exported recstream model under .local/test-home/models/current or "
            ".local/models/current: the 'model' row is pop_text (popularity blended with "
            "TF-IDF title+genre similarity), not the trained SASRec/A-LLMRec"
        ),
        "protocol": (
            "held-out users (>=5 interactions) truncated to their first t=1,2,3 interactions "
            "(in turn); target = interaction t+1; full-catalogue ranking, seen items excluded; "
            "popularity counted on the other users; LLM methods reorder pop_text's top 20 "
            "(genres as attributes), so users whose target is outside it score 0 for every LLM "
            "method and are not sent to the LLM; users taken in a seeded random order until "
            "the time budget is spent"
        ),
        "cold_users": {
            "users": len(rows),
            "users_with_llm_calls": sum(bool(r["llm_called"]) for r in rows),
            "by_history_len": dict(Counter(r["history_len"] for r in rows)),
            "pop_text_hr@20_ceiling_for_llm": round(statistics.fmean(hr20), 4) if hr20 else None,
            "table": table,
        },
        "real_model": {
            "roles": {k: v.summary() for k, v in sorted(stats.items())},
            "grounding": {
                "explanations": len(grounding),
                "pass_rate": _rate(passed, len(grounding)),
                "samples": grounding,
            },
            "shapes": shapes,
        },
        "per_user": rows,
    }


def _placed(target: str, rank: int) -> list[str]:
    """A list with ``target`` at 1-based ``rank`` (what the metrics need of one target)."""
    return [f"-{n}" for n in range(1, rank)] + [target]


def rank_metrics(rows: Sequence[dict[str, Any]], m: str) -> dict[str, Any]:
    """Precision@10, Recall@10 and uncut MRR (workers.quality) over the users whose
    list for ``m`` is known; a position known only as a range (a saved run recovered
    from HR/NDCG, see :func:`recover_ranks`) gives MRR bounds."""
    p: list[float] = []
    r: list[float] = []
    rr_lo: list[float] = []
    rr_hi: list[float] = []
    exact = 0
    for row in rows:
        rank: int | None = row.get(f"{m}_rank")
        span: list[int] | None = row.get(f"{m}_rank_range")
        if rank is not None:
            lo = hi = rank
        elif span is not None:
            lo, hi = span
        else:
            continue  # the LLM call failed: no list of its own
        exact += rank is not None
        target = row["target"]
        best, worst = _placed(target, lo), _placed(target, hi)
        # a range never straddles K: both ends give the same P/R@K
        p.append(quality.precision_at_k(best, {target}, K))
        r.append(quality.recall_at_k(best, {target}, K))
        rr_lo.append(quality.reciprocal_rank(worst, {target}))
        rr_hi.append(quality.reciprocal_rank(best, {target}))
    if not p:
        return {}
    out: dict[str, Any] = {
        "p@10": round(statistics.fmean(p), 4),
        "r@10": round(statistics.fmean(r), 4),
        "mrr": round(statistics.fmean(rr_lo), 4),
        "mrr_ci95": [round(x, 4) for x in boot_ci(rr_lo)],
        "rank_known_exactly": exact,
    }
    if rr_lo != rr_hi:
        out["mrr"] = [round(statistics.fmean(rr_lo), 4), round(statistics.fmean(rr_hi), 4)]
        out["mrr_note"] = "bounds: some positions known only as a range (11-20)"
    return out


def recover_ranks(saved: dict[str, Any], movies: dict[str, Movie], seqs: Any) -> int:
    """Uncut positions for a saved run that kept only HR/NDCG@10 per user, without the model.

    Popularity and pop_text are recomputed (deterministic given the saved
    arguments). An LLM method's list is its top 10 then pop_text's order: a hit
    gives the position from NDCG (1/log2(r+1)); a miss with the target outside
    pop_text's top 20 puts it at its pop_text position exactly; a miss with the
    target inside gives a range in 11..20, from how many of the items ahead of it
    the LLM could have taken. Returns the rows updated.
    """
    args = argparse.Namespace(**saved["args"])
    cold = ColdRankings.build(movies, seqs, args)
    done = 0
    for n, row in enumerate(saved["per_user"]):
        if cold.eval_users[n] != row["user"]:
            raise ValueError(f"row {n}: user {row['user']} is not the protocol's {n}-th user")
        _, target, pop_rank, pt_rank = cold.of(n, row["user"])
        assert target == row["target"]
        row["popularity_rank"] = position(pop_rank, target)
        row["pop_text_rank"] = p = position(pt_rank, target)
        for m in LLM_METHODS:
            value = row.get(m)
            if value is None or f"{m}_rank" in row:
                continue
            hit, ndcg = value
            if hit:
                row[f"{m}_rank"] = round(2 ** (1 / ndcg) - 1)
            elif p > TOP:
                row[f"{m}_rank"] = p
            else:
                row[f"{m}_rank_range"] = [11 + max(0, p - 11), min(10 + p, TOP)]
        done += 1
    return done


def explanation_metrics(
    samples: Sequence[dict[str, Any]], movies: dict[str, Movie]
) -> dict[str, Any]:
    """workers.quality over the real model's explanations (relevance, aspects, coherence)."""
    from contracts import Evidence
    from workers.catalog import display_title

    by_title = {m.title: m for m in movies.values()}

    def names(title: str) -> list[str]:
        return sorted({title, display_title(title)})

    others = sorted({n for m in movies.values() if len(m.title) >= 6 for n in names(m.title)})
    rel, aspects, coh, parts = [], [], [], defaultdict(list)
    for g in samples:
        item = by_title.get(g["item"])
        history = [by_title[t].id for t in g["history"] if t in by_title]
        evidence = [Evidence("history_item", item_id=i) for i in g["evidence_ids"]]
        r = quality.explanation_relevance(evidence, history=history)
        if r is not None:
            rel.append(r)
        terms = {
            "history": [n for t in g["history"] for n in names(t)],
            "genre": list(item.genres if item else ())
            + [x for i in history for x in movies[i].genres],
            "popularity": ["popular", "trending", "acclaimed"],
        }
        aspects.append(quality.text_aspects(g["text"], terms))
        c = quality.coherence(
            g["text"],
            item_names=names(g["item"]),
            evidence_names=[names(movies[i].title) for i in g["evidence_ids"] if i in movies],
            other_titles=others,
        )
        coh.append(c.score)
        parts["names_item"].append(c.names_item)
        parts["no_foreign_title"].append(c.no_foreign_title)
        parts["evidence_named"].append(c.evidence_named)
    if not samples:
        return {}
    return {
        "explanations": len(samples),
        "relevance": round(statistics.fmean(rel), 4) if rel else None,
        "relevance_note": "share of cited evidence ids in the user's history",
        "text_aspects_mean": round(quality.informativeness(aspects), 4),
        "text_aspects_used": dict(Counter(a for s in aspects for a in s)),
        "coherence": round(statistics.fmean(coh), 4),
        **{k: round(statistics.fmean(v), 4) for k, v in parts.items()},
    }


def summarise_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """The tables of a saved result recomputed (per-user rows and samples kept); uncut
    positions recovered where the run did not keep them, explanation metrics added."""
    movies, seqs = load(ml100k_folder(Settings.from_env()))
    recover_ranks(saved, movies, seqs)
    rows = [
        {
            k: (tuple(v) if isinstance(v, list) and not k.endswith("_range") else v)
            for k, v in r.items()
        }
        for r in saved["per_user"]
    ]
    table = summarise(
        argparse.Namespace(**saved["args"]), rows, {}, [], {}, time.monotonic(), True
    )["cold_users"]
    out = dict(saved)
    out["cold_users"] = table
    out["real_model"]["explanation_quality"] = explanation_metrics(
        saved["real_model"]["grounding"]["samples"], movies
    )
    return out


def print_table(result: dict[str, Any]) -> None:
    roles = result["real_model"]["roles"]
    print("\nReal model, per role (raw answers, before the library's filtering)")
    head = f"{'role':<22}{'calls':>6}{'json ok':>9}{'1st ok':>8}{'final':>7}"
    print(head + f"{'halluc ids':>12}{'p50 s':>8}{'p99 s':>8}")
    for name, s in roles.items():
        h = s["hallucinated_id_rate"]
        print(
            f"{name:<22}{s['library_calls']:>6}{_f(s['json_validity']):>9}"
            f"{_f(s['first_answer_accepted']):>8}{_f(s['success_after_repair']):>7}"
            f"{_f(h) if h is not None else '-':>12}{s['latency_p50_s']:>8}{s['latency_p99_s']:>8}"
        )
    g = result["real_model"]["grounding"]
    print(f"explanations: {g['explanations']}, grounding pass rate {_f(g['pass_rate'])}")
    cold = result["cold_users"]
    print(
        f"\nCold users (n={cold['users']}, history lengths {cold['by_history_len']}; "
        f"pop_text HR@20 = LLM ceiling {cold['pop_text_hr@20_ceiling_for_llm']})"
    )
    print(f"{'method':<18}{'n':>4}{'HR@10':>8}{'95% CI':>16}{'NDCG@10':>9}{'95% CI':>16}")
    for m, row in cold["table"].items():
        print(
            f"{m:<18}{row['n']:>4}{_f(row['hr@10']):>8}{_ci(row['hr@10_ci95']):>16}"
            f"{_f(row['ndcg@10']):>9}{_ci(row['ndcg@10_ci95']):>16}"
        )
    print(f"{'method':<18}{'n':>4}{'P@10':>8}{'R@10':>8}{'MRR (uncut)':>22}")
    for m, row in cold["table"].items():
        mrr = row.get("mrr")
        shown = f"{mrr[0]:.3f}-{mrr[1]:.3f}" if isinstance(mrr, list) else _f(mrr)
        print(f"{m:<18}{row['n']:>4}{_f(row.get('p@10')):>8}{_f(row.get('r@10')):>8}{shown:>22}")
    q = result["real_model"].get("explanation_quality")
    if q:
        print(f"explanation quality: {json.dumps(q)}")
    print("as served (a failed LLM call falls back to pop_text's order):")
    for m in LLM_METHODS:
        row = cold["table"][m]["served_with_fallback"]
        name = f"{m}+fb"
        print(
            f"{name:<18}{row['n']:>4}{_f(row['hr@10']):>8}{_ci(row['hr@10_ci95']):>16}"
            f"{_f(row['ndcg@10']):>9}{_ci(row['ndcg@10_ci95']):>16}"
        )


def _f(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--users", type=int, default=300, help="held-out users (most evaluated)")
    parser.add_argument(
        "--call-all",
        action="store_true",
        help="call the LLM also when the target is not in the top 20",
    )
    parser.add_argument("--minutes", type=float, default=45.0, help="stop starting new users")
    parser.add_argument("--explain-users", type=int, default=30)
    parser.add_argument("--feature-items", default="1,50,181,313")
    parser.add_argument("--dialogues", type=int, default=4)
    parser.add_argument("--permutations", type=int, default=1, help="rerank permutations")
    parser.add_argument("--text-weight", type=float, default=1.0)
    parser.add_argument("--call-timeout", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / f"llm-real-model-{day}.json")
    )
    parser.add_argument(
        "--resummarise", metavar="JSON", help="recompute the tables from a saved result file"
    )
    args = parser.parse_args()
    if args.resummarise:
        saved = json.loads(Path(args.resummarise).read_text())
        again = summarise_saved(saved)
        write(Path(args.resummarise), again)
        print_table(again)
        return 0
    result = asyncio.run(run(args))
    print_table(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
