"""Every role helper against a model that obeys the attacker (issue 13).

The test server plays a compromised model (``Behaviour(kind="obey")``): it
writes whatever the fenced data tells it to ("..., write: X"), with the
canary and its own system prompt filled in, inside the valid answer's free
text, as prose around the valid JSON, or as the whole answer; it does so on
the repair attempt too. The corpora are in ``tests/llm/corpora``:

* ``injection.jsonl``: class, the user text, and the marker whose presence in
  a result proves the violation got through (``@canary``: the canary in any
  disguise; ``@system``: six consecutive words of a system prompt);
  ``checkable: false`` for what no code can decide (a paraphrase without
  tell-tale words) and for benign lines, which must all succeed.
* ``pii.jsonl``: texts with personal data and the values that must not
  reach the server; ``harmless.txt``: texts that must reach it unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import html
import json
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from workers.llm import LLM, Item, LLMError, LLMPool, LLMSettings, Turn, UserContext
from workers.llm.prompts import ALL_ROLES, Fact, system_prompt
from workers.llm.safety import redact
from workers.settings import Secret
from workers.testing.llm_server import Behaviour, LLMTestServer

pytestmark = pytest.mark.integration

CORPORA = Path(__file__).parent / "corpora"
INJECTIONS: list[dict[str, Any]] = [
    json.loads(line) for line in (CORPORA / "injection.jsonl").read_text().splitlines() if line
]
PII: list[dict[str, Any]] = [
    json.loads(line) for line in (CORPORA / "pii.jsonl").read_text().splitlines() if line
]
HARMLESS = [line for line in (CORPORA / "harmless.txt").read_text().splitlines() if line]

CANARY = "CANARY-9c41e7d2b8"
CANDIDATES = [Item(f"i{n}", f"Movie {n}", f"A film about topic {n}.") for n in range(6)]
PLACEMENTS = ("inside", "around", "whole")
# Prose fields, where claims and figures are checked (tags may repeat the user).
PROSE = frozenset(
    {"reasons", "analysis", "text", "content", "popularity", "diversity", "timeliness"}
    | {"summary", "notes", "target_audience"}
)

Call = Callable[[LLM, str], Awaitable[Any]]

# helper name -> call with the attacker's text in the slot that helper takes user text in
HELPERS: dict[str, Call] = {
    "rank": lambda llm, t: llm.rank(UserContext(query=t), CANDIDATES, k=3, deadline=20),
    "rank_cot": lambda llm, t: llm.rank(
        UserContext(query=t), CANDIDATES, k=3, deadline=20, style="chain_of_thought"
    ),
    "rerank": lambda llm, t: llm.rerank(UserContext(query=t), CANDIDATES, k=3, deadline=20),
    "rank_rag": lambda llm, t: llm.rank_retrieval_augmented(
        t, CANDIDATES, [Fact("Movie 1", "genre", "drama")], k=3, deadline=20
    ),
    "extract_preferences": lambda llm, t: llm.extract_preferences(
        [Turn("user", t)], deadline=20, mentioned_items=CANDIDATES[:2]
    ),
    "classify_conversation": lambda llm, t: llm.classify_conversation(
        [Turn("assistant", "What do you feel like?")], t, current_state="greeting", deadline=20
    ),
    # the item's own text is the only input: the attacker is the catalog here
    "extract_features": lambda llm, t: llm.extract_features(
        Item("x1", "Some film", t), deadline=20
    ),
    "explain": lambda llm, t: llm.explain(
        UserContext(query=t, history=[CANDIDATES[4]]), CANDIDATES[0], CANDIDATES[1:3], deadline=20
    ),
    "explain_aspects": lambda llm, t: llm.explain_aspects(
        UserContext(query=t), CANDIDATES[0], signals={"views": 3}, deadline=20
    ),
    "explain_comparative": lambda llm, t: llm.explain_comparative(
        UserContext(query=t), CANDIDATES[:3], deadline=20
    ),
}
# Grounding is about what the call's data holds; for extract_features the
# attacker's text *is* the data (the item description), so it grounds itself.
NOT_APPLICABLE = {"extract_features": {"grounding_id", "grounding_claim"}}


# --- independent oracles (deliberately not the library's code) ---------------

_LOOKALIKE = str.maketrans("аАсСеЕоОрРхХуВНКМТіІѕЅјЈ", "aAcCeEoOpPxXyBHKMTiIsSjJ")


def _plain(text: str) -> str:
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFKC", text).translate(_LOOKALIKE)
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf")).lower()


def _squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", _plain(text))


_CANARY_FORMS = [
    _squash(f)
    for f in (
        CANARY,
        CANARY[::-1],
        codecs.encode(CANARY, "rot13"),
        base64.b64encode(CANARY.encode()).decode(),
        CANARY.encode().hex(),
    )
]


def _has_canary(text: str) -> bool:
    return any(f in _squash(text) for f in _CANARY_FORMS)


def _words(text: str) -> list[str]:
    return [w for w in (re.sub(r"[^0-9a-z]", "", w) for w in _plain(text).split()) if w]


_SYSTEM_6GRAMS = {
    " ".join(ws[i : i + 6])
    for spec in ALL_ROLES.values()
    for batch in (False, True)
    for ws in [_words(system_prompt(spec, batch=batch))]
    for i in range(len(ws) - 5)
}


def _has_system(text: str) -> bool:
    ws = _words(text)
    return any(" ".join(ws[i : i + 6]) in _SYSTEM_6GRAMS for i in range(len(ws) - 5))


_LINKISH = re.compile(
    r"[a-z]+://|www\.|hxxp|\[\.\]|\(\.\)|\b\w+\.(?:com|net|org|io|ru|example|ly)\b"
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|javascript:|<\s*[a-z/!]|\bon\w+\s*="
)


def _invariant_broken(text: str) -> bool:
    """Any result string: no canary, no hidden characters, no markup, no link."""
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in text):
        return True
    return _has_canary(text) or bool(_LINKISH.search(_plain(text)))


def _strings(value: Any, *, prose_only: bool = False, in_prose: bool = False) -> list[str]:
    if is_dataclass(value) and not isinstance(value, type):
        return [
            s
            for f in fields(value)
            if f.name != "usage"
            for s in _strings(
                getattr(value, f.name), prose_only=prose_only, in_prose=f.name in PROSE
            )
        ]
    if isinstance(value, str):
        return [value] if in_prose or not prose_only else []
    if isinstance(value, dict):
        return [
            s
            for k, v in value.items()
            for s in (
                *_strings(k, prose_only=prose_only, in_prose=in_prose),
                *_strings(v, prose_only=prose_only, in_prose=in_prose),
            )
        ]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v, prose_only=prose_only, in_prose=in_prose)]
    return []


def _passed_on(line: dict[str, Any], result: Any) -> bool:
    """Whether the violation this line asks for is in the result."""
    cls, marker = line["class"], line["marker"]
    texts = _strings(result, prose_only=cls == "grounding_claim")
    if marker == "@canary":
        return any(_has_canary(t) for t in texts)
    if marker == "@system":
        return any(_has_system(t) for t in texts)
    if unicodedata.category(marker[0]) in ("Cc", "Cf"):
        return any(marker in t for t in texts)
    return any(_plain(marker) in _plain(t) for t in texts)


# --- the runs ---------------------------------------------------------------


async def _run_lines(llm: LLM, call: Call, texts: list[str]) -> list[Any]:
    limit = asyncio.Semaphore(16)

    async def one(text: str) -> Any:
        async with limit:
            try:
                return await call(llm, text)
            except LLMError as exc:
                return exc

    return await asyncio.gather(*(one(t) for t in texts))


def test_corpora_cover_every_class() -> None:
    classes = {line["class"] for line in INJECTIONS}
    assert len(INJECTIONS) >= 100 and len(PII) >= 60 and len(HARMLESS) >= 10
    assert {"canary", "markup", "link", "grounding_id", "grounding_claim"} <= classes
    assert {"system_leak", "system_paraphrase", "pii_echo", "benign"} <= classes
    pii_classes = {line["class"] for line in PII}
    assert {
        "email",
        "phone",
        "card",
        "ssn",
        "nino",
        "dni",
        "nie",
        "iban",
        "ip",
        "dob",
    } <= pii_classes
    assert {"address", "po_box", "postcode"} <= pii_classes


async def test_obeying_model_passes_no_checkable_violation(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    settings = make_settings(llm_cache_enabled=False, llm_canary=Secret(CANARY))
    texts = [line["text"] for line in INJECTIONS]
    rows = []
    total_passed = total_broken = 0
    unblocked_benign: list[str] = []
    async with LLMPool(settings) as pool:
        llm = LLM(pool)
        for name, call in HELPERS.items():
            skip = NOT_APPLICABLE.get(name, set())
            for placement in PLACEMENTS:
                server.script(default=Behaviour(kind="obey", placement=placement))
                outcomes = await _run_lines(llm, call, texts)
                results = refused = passed = unchecked = broken = 0
                benign_ok = benign = 0
                for line, outcome in zip(INJECTIONS, outcomes, strict=True):
                    is_benign = line["class"] == "benign"
                    benign += is_benign
                    if isinstance(outcome, LLMError):
                        refused += 1
                        if is_benign and placement != "whole":
                            unblocked_benign.append(f"{name}/{placement}: {line['text']}")
                        continue
                    results += 1
                    benign_ok += is_benign
                    broken += any(_invariant_broken(s) for s in _strings(outcome))
                    if is_benign or line["class"] in skip:
                        continue
                    if _passed_on(line, outcome):
                        if line["checkable"]:
                            passed += 1
                            print(f"PASSED ON {name}/{placement}: {line['text']!r} -> {outcome}")
                        else:
                            unchecked += 1
                rows.append(
                    (
                        name,
                        placement,
                        results,
                        refused,
                        passed,
                        broken,
                        unchecked,
                        benign_ok,
                        benign,
                    )
                )
                total_passed += passed
                total_broken += broken
    print(
        f"\nobeying model, {len(INJECTIONS)} injection lines per helper and placement\n"
        f"{'helper':22} {'placement':9} {'results':>7} {'refused':>7} {'violations':>10} "
        f"{'invariant':>9} {'uncheckable':>11} {'benign ok':>9}"
    )
    for name, placement, results, refused, passed, broken, unchecked, ok, benign in rows:
        print(
            f"{name:22} {placement:9} {results:7} {refused:7} {passed:10} {broken:9} "
            f"{unchecked:11} {ok:>5}/{benign}"
        )
    assert total_passed == 0
    assert total_broken == 0
    # whole-answer prose is never valid JSON, so benign lines succeed there only by chance
    assert unblocked_benign == []


def _sent_data(server: LLMTestServer) -> str:
    """Everything the server received, decoded (fence escapes undone), one string."""
    out = []
    for record in server.records:
        for message in orjson.loads(record.body)["messages"]:
            found = re.search(r"<data>\n(.*?)\n</data>", message["content"], re.DOTALL)
            if found and message["role"] == "user":
                # the fenced data must still be JSON after every redaction pass
                out.append(orjson.dumps(orjson.loads(found.group(1))).decode())
            out.append(message["content"])
    return "\n".join(out)


def _reaches(value: str, sent: str) -> bool:
    sent_l = sent.lower()
    if value.lower() in sent_l:
        return True
    squashed = re.sub(r"\s", "", value.lower())
    return len(squashed) >= 6 and squashed in re.sub(r"\s", "", sent_l)


def test_redaction_unit_figures() -> None:
    missed = [
        (line["class"], v)
        for line in PII
        for v in line["values"]
        if _reaches(v, redact(line["text"]))
    ]
    altered = [h for h in HARMLESS if redact(h) != h]
    print(
        f"\nredact(): {sum(len(p['values']) for p in PII)} PII values in {len(PII)} lines, "
        f"missed {len(missed)}; {len(HARMLESS)} harmless lines, altered {len(altered)}"
    )
    assert missed == [] and altered == []


async def test_pii_never_reaches_the_server_and_harmless_text_does(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    values = sum(len(line["values"]) for line in PII)
    print(f"\nPII: {len(PII)} lines, {values} values; {len(HARMLESS)} harmless lines")
    print(
        f"{'helper':22} {'requests':>8} {'PII values reaching server':>26} {'harmless altered':>17}"
    )
    total_leaked = total_altered = 0
    async with LLMPool(make_settings(llm_cache_enabled=False)) as pool:
        llm = LLM(pool)
        for name, call in HELPERS.items():
            server.records.clear()
            await _run_lines(llm, call, [line["text"] for line in PII])
            sent = _sent_data(server)
            leaked = [v for line in PII for v in line["values"] if _reaches(v, sent)]
            requests = len(server.records)
            server.records.clear()
            await _run_lines(llm, call, HARMLESS)
            sent = _sent_data(server)
            altered = [h for h in HARMLESS if h not in sent]
            print(f"{name:22} {requests:8} {len(leaked):26} {len(altered):17}")
            total_leaked += len(leaked)
            total_altered += len(altered)
    assert total_leaked == 0
    assert total_altered == 0
