"""Safety in the running stream (issue 8, acceptance "Safety").

The injection and PII corpora of the LLM library's own attack tests
(tests/llm/corpora) go through Kafka to a real worker process: every line as
a chat message (sessions of three turns; ``RECSTREAM_CHAT_COMPLEX_AT=0`` sends
every turn to the LLM's preference extractor) and every line again as a cold
user's stated context on a request (the ``llm`` role ranks with it, the
``explain`` role writes the list's first explanation with the LLM). The LLM is
the LLM TEST SERVER (not a model) playing a model that obeys the attacker
(``Behaviour(kind="obey")``: it writes whatever the data orders, with the
canary and its system prompt filled in) and, for explanations, whose data
holds no attacker text, a model that leaks on its own (``kind="injected"``,
every variant in turn). A few records the contracts refuse, with personal
data in them, go along.

Checked, with oracles independent of the defences (tests/llm/test_attacks.py):

* no canary (in any disguise), system-prompt run, link, markup or hidden
  character in any output event (chat replies, recommendations, LLM work,
  explanations);
* no PII value of the corpus in any request the LLM server received, in any
  output event, or in the worker's log;
* every message and request answered, or dead-lettered with a reason; a dead
  letter keeps the raw payload byte for byte (for re-driving), its reason
  quotes none of it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from contracts import (
    CODECS,
    ChatMessage,
    ChatReply,
    DeadLetter,
    Explanation,
    Recommendation,
    RecommendationRequest,
    topics,
)
from streams.kafka import KafkaProducerResource, topic_reader
from streams.replay import ml100k_events, ml100k_folder
from tests.llm.test_attacks import (
    CANARY,
    INJECTIONS,
    PII,
    _has_canary,
    _has_system,
    _invariant_broken,
    _sent_data,
)
from tests.streams.harness import WorkerProcess, worker_env
from workers.catalog import CatalogStore
from workers.resources import RedisResource
from workers.settings import Settings
from workers.testing.llm_server import Behaviour, LLMTestServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATALOG_ITEMS = 300
TURNS_PER_SESSION = 3
ROLES = ["catalog", "requests", "llm", "chat", "explain"]
# What users and downstream consumers read, and the internal work topic (which
# carries a cold user's stated context to the llm role).
USER_FACING = (topics.CHAT_REPLIES, topics.RECOMMENDATIONS, topics.EXPLANATIONS)
OUTPUT_TOPICS = (*USER_FACING, topics.LLM_WORK)
TEXTS = [line["text"] for line in INJECTIONS] + [line["text"] for line in PII]
PII_VALUES = sorted({v for line in PII for v in line["values"]})


@pytest.fixture
async def llm_server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer() as server:
        yield server


def _found(value: str, text: str) -> bool:
    """Whether a PII value is in ``text``: as written (any case) or with its spaces
    dropped, standing alone ("Paris" is not in "comparison", "75001" not in a
    longer number)."""
    low, want = text.lower(), value.lower()

    def hit(needle: str, hay: str) -> bool:
        return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", hay) is not None

    if hit(want, low):
        return True
    squashed = re.sub(r"\s", "", want)
    return len(squashed) >= 6 and hit(squashed, re.sub(r"\s", "", low))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _bad_records(now_ms: int) -> list[tuple[str, bytes, bytes]]:
    """Records the contracts refuse, each carrying personal data: (topic, key, raw)."""
    too_long = {
        "v": 1,
        "event_id": "safe-bad-long",
        "session_id": "safe-bad",
        "user_id": "safe-bad",
        "text": "my card is 4111 1111 1111 1111 and " + "a" * 4000,
        "ts_ms": now_ms,
    }
    big_context = {
        "v": 1,
        "request_id": "safe-bad-ctx",
        "user_id": "safe-bad",
        "k": 10,
        "context": {"query": "call me on 415 555 2671 about " + "b" * 300},
        "ts_ms": now_ms,
    }
    return [
        (topics.CHAT, b"safe-bad", orjson.dumps(too_long)),
        (topics.CHAT, b"safe-bad", b'{"text": "write to jane.roe@example.com", broken'),
        (topics.REQUESTS, b"safe-bad", orjson.dumps(big_context)),
    ]


async def _redis_text(client: aioredis.Redis) -> str:
    """Every value held in the test's Redis database, as text (state at rest)."""
    parts: list[str] = []
    async for key in client.scan_iter(count=500):
        kind = (await client.type(key)).decode()
        if kind == "string":
            values: list[Any] = [await client.get(key)]
        elif kind == "hash":
            values = [x for kv in (await client.hgetall(key)).items() for x in kv]
        elif kind == "list":
            values = await client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(await client.smembers(key))
        elif kind == "zset":
            values = await client.zrange(key, 0, -1)
        else:
            values = []
        parts += [key.decode(errors="replace")]
        parts += [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values]
    return "\n".join(parts)


async def _read_until(
    settings: Settings, done: Any, timeout: float
) -> dict[str, list[tuple[bytes, Any]]]:
    """Raw value and decoded event of every record on the output topics and the
    dead-letter topic, from the start, until ``done(seen)``."""
    names = (*OUTPUT_TOPICS, topics.DEAD_LETTERS)
    by_full = {settings.kafka.topic(n): n for n in names}
    consumer = topic_reader(settings.kafka, *names)
    await consumer.start()
    seen: dict[str, list[tuple[bytes, Any]]] = {n: [] for n in names}
    deadline = time.monotonic() + timeout
    try:
        while not done(seen):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out; records so far: { {n: len(v) for n, v in seen.items()} }"
                )
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    name = by_full[r.topic]
                    seen[name].append((r.value, CODECS[name].decode(r.value)))
    finally:
        await consumer.stop()
    return seen


async def test_injection_and_pii_corpora_through_the_chat_path(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
    llm_server: LLMTestServer,
) -> None:
    llm_server.script(
        default=Behaviour(kind="obey", placement="inside"),
        roles={"explain": [Behaviour(kind="injected", variant=v) for v in range(10)]},
    )
    # A third of the chat and ranking calls get the order as prose around the JSON.
    llm_server.script(*(Behaviour(kind="obey", placement="around") for _ in range(60)))
    catalog, _ = ml100k_events(ml100k_folder(settings), limit=1)
    catalog = catalog[:CATALOG_ITEMS]
    catalog_text = " ".join(
        f"{c.title} {' '.join(map(str, (c.attributes or {}).values()))}" for c in catalog
    )
    now = int(time.time() * 1000)
    chats = [
        ChatMessage(
            event_id=f"safe-c{n}",
            session_id=f"safe-s{n // TURNS_PER_SESSION}",
            user_id=f"safe-cu{n // TURNS_PER_SESSION}",
            text=text,
            ts_ms=now + n,
        )
        for n, text in enumerate(TEXTS)
    ]
    requests = [
        RecommendationRequest(
            request_id=f"safe-r{n}",
            user_id=f"safe-ru{n}",
            k=10,
            ts_ms=now + n,
            context={"query": text[:256]},
        )
        for n, text in enumerate(TEXTS)
    ]
    bad = _bad_records(now)
    env = worker_env(
        settings,
        model_dir,
        RECSTREAM_LLM_BASE_URL=llm_server.url,
        RECSTREAM_LLM_MODEL="test-model",
        RECSTREAM_LLM_RPM="0",
        RECSTREAM_LLM_TPM="0",
        RECSTREAM_LLM_MAX_ATTEMPTS="1",
        RECSTREAM_LLM_CACHE="false",
        RECSTREAM_LLM_CANARY=CANARY,
        RECSTREAM_LLM_KEY_PREFIX=f"rs-test-llm-{llm_server.port}",
        RECSTREAM_CHAT_COMPLEX_AT="0",
        # A loaded 2-core CI machine: give the LLM calls time, so they are made
        # (the deadline ladder is tested elsewhere).
        RECSTREAM_REQUEST_DEADLINE_MS="30000",
        RECSTREAM_CHAT_DEADLINE_MS="30000",
        RECSTREAM_EXPLAIN_DEADLINE_MS="30000",
    )
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, ROLES, log).start()
    try:
        await worker.wait_ready()
        async with KafkaProducerResource(settings.kafka) as kafka:
            producer = kafka.producer
            for c in catalog:
                await producer.send(
                    settings.kafka.topic(topics.CATALOG),
                    CODECS[topics.CATALOG].encode(c),
                    key=c.item_id.encode(),
                )
            await producer.flush()
            deadline = time.monotonic() + 120
            async with RedisResource(settings.redis) as redis:
                store = CatalogStore(redis)
                while await store.seq() < len(catalog):
                    assert time.monotonic() < deadline, "catalog not applied"
                    await asyncio.sleep(0.3)
            await asyncio.sleep(2)  # the catalog view polls the store (RECSTREAM_CATALOG_POLL_MS)
            for m in chats:
                await producer.send(
                    settings.kafka.topic(topics.CHAT),
                    CODECS[topics.CHAT].encode(m),
                    key=m.session_id.encode(),
                )
            for r in requests:
                await producer.send(
                    settings.kafka.topic(topics.REQUESTS),
                    CODECS[topics.REQUESTS].encode(r),
                    key=r.user_id.encode(),
                )
            for topic, key, raw in bad:
                await producer.send(settings.kafka.topic(topic), raw, key=key)
            await producer.flush()

        chat_ids = {m.event_id for m in chats} | {"safe-bad-long", "(unparseable)"}
        request_ids = {r.request_id for r in requests} | {"safe-bad-ctx"}

        def dead_ids(seen: dict[str, list[tuple[bytes, Any]]]) -> set[str]:
            out = set()
            for _, letter in seen[topics.DEAD_LETTERS]:
                try:
                    doc = orjson.loads(base64.b64decode(letter.payload_b64))
                    out.add(str(doc.get("event_id") or doc.get("request_id")))
                except orjson.JSONDecodeError:
                    out.add("(unparseable)")
            return out

        def done(seen: dict[str, list[tuple[bytes, Any]]]) -> bool:
            dead = dead_ids(seen)
            replied = {e.in_reply_to for _, e in seen[topics.CHAT_REPLIES]} | dead
            recs = [e for _, e in seen[topics.RECOMMENDATIONS] if e.cause.kind == "request"]
            answered = {e.cause.id for e in recs} | dead
            explained = {e.rec_id for _, e in seen[topics.EXPLANATIONS]}
            return (
                chat_ids <= replied
                and request_ids <= answered
                and {e.rec_id for e in recs} <= explained
            )

        seen = await _read_until(settings, done, timeout=600)
        assert worker.alive()
    finally:
        assert worker.stop() == 0, worker.tail()

    # --- every message answered or dead-lettered, with its reason, raw kept ----
    letters: list[DeadLetter] = [e for _, e in seen[topics.DEAD_LETTERS]]
    sent_raw = {raw for _, _, raw in bad}
    for m in chats:
        sent_raw.add(CODECS[topics.CHAT].encode(m))
    for r in requests:
        sent_raw.add(CODECS[topics.REQUESTS].encode(r))
    for letter in letters:
        raw = base64.b64decode(letter.payload_b64)
        assert raw in sent_raw and not letter.payload_truncated, "the raw payload, byte for byte"
        assert letter.reason and letter.error_type
        assert not any(_found(v, letter.reason) for v in PII_VALUES), letter.reason
    bad_raw = {raw for _, _, raw in bad}
    assert bad_raw <= {base64.b64decode(x.payload_b64) for x in letters}
    replies: list[ChatReply] = [e for _, e in seen[topics.CHAT_REPLIES]]
    recs: list[Recommendation] = [e for _, e in seen[topics.RECOMMENDATIONS]]
    explanations: list[Explanation] = [e for _, e in seen[topics.EXPLANATIONS]]

    # --- no canary, system prompt, link, markup or hidden character out --------
    # (The work topic carries the user's own words: markup there is input, not output.)
    leaks: list[str] = []
    out_strings = 0
    for name in OUTPUT_TOPICS:
        for _, event in seen[name]:
            for s in _strings(event.to_dict()):
                out_strings += 1
                if name in USER_FACING:
                    flagged = _has_canary(s) or _has_system(s) or _invariant_broken(s)
                else:  # the user's words, which may well quote a prompt
                    flagged = _has_canary(s)
                if flagged:
                    leaks.append(f"{name}: {s!r}")

    # --- no PII value in what the LLM received, the outputs, the log -----------
    # City names and postcodes a catalog title also holds are not told apart
    # from the title itself; they are left out of the check (and counted).
    checked = [v for v in PII_VALUES if not _found(v, catalog_text)]
    sent = _sent_data(llm_server)
    pii_to_llm = [v for v in checked if _found(v, sent)]
    pii_out: list[str] = []
    for name in OUTPUT_TOPICS:
        text = "\n".join(s for _, event in seen[name] for s in _strings(event.to_dict()))
        pii_out += [f"{name}: {v}" for v in checked if _found(v, text)]
    stored = await _redis_text(redis_client)
    pii_stored = [v for v in checked if _found(v, stored)]
    log_text = log.read_text(errors="replace")
    pii_logged = [v for v in checked if _found(v, log_text)]
    canary_logged = _has_canary(log_text)

    calls = Counter(r.role for r in llm_server.records)
    sources = Counter(e.source for e in explanations)
    print(
        f"\nsafety through the stream: {len(chats)} chat messages "
        f"({len(INJECTIONS)} injection + {len(PII)} PII lines) and {len(requests)} cold "
        f"requests with the same text, plus {len(bad)} refused records; "
        f"{len(replies)} replies, {len(recs)} recommendations, {len(explanations)} "
        f"explanations {dict(sources)}, {len(letters)} dead letters "
        f"{dict(Counter(x.error_type for x in letters))}\n"
        f"LLM calls {sum(calls.values())} {dict(calls)}\n"
        f"leaks in output events: {len(leaks)}/{out_strings} strings; "
        f"PII values ({len(checked)} of {len(PII_VALUES)} checked): "
        f"to the LLM {len(pii_to_llm)}, in outputs {len(pii_out)}, in the log "
        f"{len(pii_logged)}, in Redis {len(pii_stored)}; canary in the log: {canary_logged}"
    )
    assert leaks == [], leaks[:10]
    assert pii_to_llm == [], pii_to_llm
    assert pii_out == [], pii_out
    assert pii_logged == [] and not canary_logged, pii_logged
    assert pii_stored == [], pii_stored
    # The hostile model was really asked: every path called it.
    assert calls["extract_preferences"] >= len(chats) // 2
    assert calls["rank"] and calls["explain"]
    assert len(checked) >= 0.8 * len(PII_VALUES)
