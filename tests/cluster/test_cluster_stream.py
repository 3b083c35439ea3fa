"""The stream tests' core against a 3-master Redis Cluster: a real ``recstream worker``
(every role) on the shared Kafka, its Redis a private cluster, the scripted LLM TEST
SERVER (not a model) as its LLM endpoint with shared limits, budget and cache on.

What must hold is what holds on one Redis: every request answered once (one
distinct list per request), every chat turn replied to, every list explained,
the users' state equal to the offline recomputation, no dead letter. A store
whose script or command mixed hash slots would be refused by the cluster client,
its batch dead-lettered and its outputs missing: this test would fail.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from contracts import (
    CODECS,
    ChatMessage,
    ChatReply,
    Explanation,
    Recommendation,
    RecommendationRequest,
    topics,
)
from streams.replay import ml100k_events, ml100k_folder, replay
from tests.cluster.servers import RedisClusterServers
from tests.streams.harness import WorkerProcess, collect, send_requests, worker_env
from tests.streams.test_end_to_end import _expected, _state_of, _wait_for_state
from workers.catalog import CatalogStore
from workers.resources import RedisResource
from workers.settings import Settings
from workers.state import UserStateStore
from workers.testing.llm_server import LLMTestServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 2000
COLD, CHAT = 0.1, 0.02


def _now() -> int:
    return int(time.time() * 1000)


async def items_logged(redis: RedisResource, store: CatalogStore, count: int) -> bool:
    return int(await redis.client.zcard(store.log_key)) >= count


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


@pytest.fixture
async def llm_server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer() as server:
        yield server


def _cluster_env(settings: Settings, model_dir: Path, server: LLMTestServer) -> dict[str, str]:
    return worker_env(
        settings,
        model_dir,
        RECSTREAM_REDIS_CLUSTER="true",
        # As in tests/streams/test_llm_paths.py: routes and rungs are checked, not
        # the deadline ladder, on a busy machine that embeds the catalog meanwhile.
        RECSTREAM_REQUEST_DEADLINE_MS="20000",
        RECSTREAM_LLM_BASE_URL=server.url,
        RECSTREAM_LLM_MODEL="test-model",
        RECSTREAM_LLM_MAX_ATTEMPTS="1",
        # Limits and a budget far above what the test uses, so that their shared
        # (Redis) scripts run on every call without refusing any.
        RECSTREAM_LLM_RPM="100000",
        RECSTREAM_LLM_TPM="100000000",
        RECSTREAM_LLM_BUDGET_TOKENS_PER_MINUTE="100000000",
        RECSTREAM_LLM_KEY_PREFIX="rs-test:llm",
    )


async def test_every_role_on_a_redis_cluster_loses_nothing_and_matches_offline_state(
    cluster_settings: Settings,
    redis_cluster: RedisClusterServers,
    kafka_topics: dict[str, str],
    model_dir: Path,
    tmp_path: Path,
    llm_server: LLMTestServer,
) -> None:
    settings = cluster_settings
    catalog, stream = ml100k_events(
        ml100k_folder(settings), limit=LIMIT, cold_share=COLD, chat_share=CHAT
    )
    events = list(stream)
    requests = {e.request_id for t, e in events if t == topics.REQUESTS}  # type: ignore[union-attr]
    cold = {e.request_id for t, e in events if t == topics.REQUESTS and e.context}  # type: ignore[union-attr]
    chats = {e.event_id for t, e in events if isinstance(e, ChatMessage)}
    expected = _expected(catalog, events)
    worker = WorkerProcess(
        _cluster_env(settings, model_dir, llm_server), ["all"], tmp_path / "worker.log"
    ).start()
    try:
        await worker.wait_ready(timeout=180)
        stats = await replay(
            settings, limit=LIMIT, cold_share=COLD, chat_share=CHAT, progress=False
        )
        assert stats.requests == len(requests) and stats.malformed == 0
        recs: list[Recommendation] = await collect(
            settings,
            topics.RECOMMENDATIONS,
            until=lambda rs: requests <= {r.cause.id for r in rs if r.cause.kind == "request"},
            timeout=400,
        )
        replies: list[ChatReply] = await collect(
            settings,
            topics.CHAT_REPLIES,
            until=lambda rs: chats <= {r.in_reply_to for r in rs},
            timeout=400,
        )
        # A request that came before the catalog was loaded gets an empty list, with
        # nothing to explain; every other list is explained.
        owed = {r.rec_id for r in recs if r.cause.kind == "request" and r.items}
        explanations: list[Explanation] = await collect(
            settings,
            topics.EXPLANATIONS,
            until=lambda es: owed <= {e.rec_id for e in es},
            timeout=400,
        )
        await _wait_for_state(settings, expected, timeout=300)
        got = await _state_of(settings, sorted(expected))
        async with RedisResource(settings.redis) as redis:
            store = UserStateStore(redis)
            # Items turned down in chat are excluded too (the offline state knows only
            # the interactions): read them to compare the rest exactly.
            disliked = {
                u: {m.decode() for m in await redis.client.smembers(store.disliked_key(u))}
                for u in expected
            }
            # Every catalog item applied (this process's catalog role refreshes its
            # view after each batch it applies): lists from now on are full.
            items = CatalogStore(redis)
            await _until(
                lambda: items_logged(redis, items, len({c.item_id for c in catalog})),
                "catalog applied",
            )
        probes = [RecommendationRequest(f"probe-{u}", u, 10, _now()) for u in sorted(expected)]
        await send_requests(settings, probes)
        probed: list[Recommendation] = await collect(
            settings,
            topics.RECOMMENDATIONS,
            until=lambda rs: {p.request_id for p in probes} <= {r.cause.id for r in rs},
            timeout=400,
        )
        dead = await collect(settings, topics.DEAD_LETTERS, until=lambda d: True, quiet_s=3)
        assert worker.alive()
    finally:
        assert worker.stop() == 0, worker.tail()
    log = worker.log.read_text(errors="replace")
    assert "same key slot" not in log and "CROSSSLOT" not in log, worker.tail()
    assert not dead, [getattr(d, "reason", d) for d in dead][:5]
    # Every request answered, one distinct list each, copies byte-identical.
    answers: dict[str, set[bytes]] = {}
    for r in recs + probed:
        if r.cause.kind == "request":
            answers.setdefault(r.cause.id, set()).add(CODECS[topics.RECOMMENDATIONS].encode(r))
    assert set(answers) == requests | {p.request_id for p in probes}
    assert all(len(copies) == 1 for copies in answers.values()), "a request got two answers"
    rungs = Counter(r.rung for r in recs if r.cause.kind == "request" and r.cause.id in cold)
    assert rungs["llm"] + rungs["llm_cached"] > 0, f"the LLM rung never answered: {rungs}"
    assert {r.in_reply_to for r in replies} >= chats
    assert {e.rec_id for e in explanations} >= owed and owed
    catalog_ids = {c.item_id for c in catalog}
    for rec in probed:
        if rec.cause.id.startswith("probe-"):
            listed = [i.item_id for i in rec.items]
            assert len(set(listed)) == 10 and set(listed) <= catalog_ids, rec
            assert not set(listed) & got[rec.user_id].excluded, "a consumed item listed"
    # State equal to the offline recomputation of the interactions.
    assert set(got) == set(expected)
    for user, state in expected.items():
        assert got[user] == replace(state, excluded=state.excluded | disliked[user]), user
    per_node = redis_cluster.keys_per_node()
    assert all(n > 0 for n in per_node), per_node
    # Every key under the deployment's prefix, so an ACL of ~<prefix>* covers the worker.
    strays = [k for k in redis_cluster.all_keys() if not k.startswith("rs-test:")]
    assert not strays, strays[:10]
    print(
        f"\nRedis Cluster (keys per master {per_node}): {stats.interactions} interactions, "
        f"{len(requests)} requests ({len(cold)} cold; cold rungs {dict(rungs)}; "
        f"{len(requests) - len(owed)} empty, sent before the catalog was in), "
        f"{len(probes)} probe requests after it (10 valid items each), "
        f"{len(chats)} chat turns, {len(explanations)} explanations, 0 dead letters; "
        f"state of {len(expected)} users == offline; "
        f"{len(llm_server.records)} calls to the LLM test server"
    )
