"""Benchmark: what the LLM safety checks cost per model output and per input.

For each role's canned answer, planted with each line of the injection
corpus (tests/llm/corpora/injection.jsonl) and with nothing, it times the
whole validation of one output as the library runs it: JSON extraction,
typed fields, :func:`clean_text` (normalisation, markup, links, PII) and the
leak guard bound to the call's grounding. It also times :func:`redact` on
each line of the PII and harmless corpora (inputs), and on one fenced rank
prompt (what the pool redacts again before sending). Prints p50/p99 in µs.

    .venv/bin/python benchmarks/bench_safety.py --repeat 20
    .venv/bin/python benchmarks/bench_safety.py --model-dir ~/.recstream/models/current \\
        --lines 20 --repeat 5

``--model-dir`` adds the MiniLM paraphrase check (onnxruntime, CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.llm.errors import InvalidOutput  # noqa: E402
from workers.llm.grounding import Grounding  # noqa: E402
from workers.llm.prompts import (  # noqa: E402
    ALL_ROLES,
    Item,
    ParseContext,
    UserContext,
    build_messages,
    system_prompt,
)
from workers.llm.safety import Embedder, LeakGuard, fence, redact  # noqa: E402
from workers.testing import llm_server  # noqa: E402

CORPORA = ROOT / "tests" / "llm" / "corpora"
CANARY = "CANARY-9c41e7d2b8"
ROLES = (
    *("rank", "rank_cot", "rank_rag", "extract_preferences", "conversation_state"),
    *("extract_features", "explain", "explain_aspects", "explain_comparative"),
)


def _data(role: str, text: str) -> dict[str, Any]:
    items = [Item(f"i{n}", f"Movie {n}", f"A film about topic {n}.") for n in range(6)]
    user = UserContext(query=text).data()
    if role in ("rank", "rank_cot", "rank_rag"):
        return {"user": user, "k": 3, "candidates": [i.data() for i in items]}
    if role == "extract_preferences":
        return {"dialogue": [{"role": "user", "text": text}], "mentioned_items": []}
    if role == "conversation_state":
        return {"dialogue": [], "message": text, "current_state": "greeting"}
    if role == "extract_features":
        return {"item": Item("x1", "Some film", text).data()}
    if role == "explain":
        return {"user": user, "item": items[0].data(), "evidence": [i.data() for i in items[1:3]]}
    if role == "explain_aspects":
        return {"user": user, "item": items[0].data(), "signals": {"views": 3}}
    return {"user": user, "items": [i.data() for i in items[:3]]}


def _percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"n={len(samples):6d}  p50 {p50 * 1e6:8.1f} µs  p99 {p99 * 1e6:8.1f} µs"


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        with contextlib.suppress(InvalidOutput):  # a refusal is an outcome, timed too
            fn()
        out.append(time.perf_counter() - start)
    return out


def _validate(spec: Any, guard: LeakGuard, content: str, clean: dict[str, Any]) -> object:
    """One output through what the LLM class runs on it (bar the HTTP call)."""
    ctx = ParseContext(clean, guard.bound(Grounding.from_data(clean)))
    return spec.parse(content, ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timings per case")
    parser.add_argument("--model-dir", type=Path, help="exported model (adds the MiniLM check)")
    parser.add_argument("--lines", type=int, default=0, help="first N corpus lines (0: all)")
    args = parser.parse_args()

    embedder: Embedder | None = None
    if args.model_dir:
        from workers.model.manifest import load_manifest
        from workers.model.settings import ModelSettings
        from workers.model.text_encoder import TextEncoder

        settings = ModelSettings(model_dir=args.model_dir, intra_op_threads=1, device="cpu")
        embedder = TextEncoder(load_manifest(args.model_dir), settings).encode

    lines = [
        json.loads(line)["text"]
        for line in (CORPORA / "injection.jsonl").read_text().splitlines()
        if line
    ][: args.lines or None]
    output_samples: list[float] = []
    refused = total = 0
    for role in ROLES:
        spec = ALL_ROLES[role]
        guard = LeakGuard([CANARY], [system_prompt(spec, canary=CANARY)], embedder=embedder)
        for text in ["", *lines]:
            _, clean = build_messages(
                spec, _data(role, text), max_prompt_tokens=3000, canary=CANARY
            )
            system = system_prompt(spec, canary=CANARY)
            parsed = llm_server._Parsed(role, system, clean, 300)
            content = llm_server.obey(parsed, "inside")

            validate = partial(_validate, spec, guard, content, clean)
            with contextlib.suppress(InvalidOutput):
                validate()  # warms caches (confusables table, phone metadata)
            try:
                validate()
            except InvalidOutput:
                refused += 1
            total += 1
            output_samples += _time(validate, args.repeat)

    pii = [json.loads(line)["text"] for line in (CORPORA / "pii.jsonl").read_text().splitlines()]
    harmless = (CORPORA / "harmless.txt").read_text().splitlines()
    input_samples = [
        s for text in pii + harmless for s in _time(partial(redact, text), args.repeat)
    ]
    body = fence(_data("rank", "a calm film about friendship"))
    body_samples = _time(partial(redact, body), args.repeat * 20)

    print(f"safety checks, {'with' if embedder else 'without'} the MiniLM paraphrase check")
    answers = f"{len(ROLES)} roles x {len(lines) + 1} answers, {refused}/{total} refused"
    print(f"validate one output ({answers})")
    print("  " + _percentiles(output_samples))
    print(f"redact one input line ({len(pii)} PII + {len(harmless)} harmless lines)")
    print("  " + _percentiles(input_samples))
    print(f"redact one fenced rank prompt ({len(body)} chars)")
    print("  " + _percentiles(body_samples))


if __name__ == "__main__":
    main()
