"""Every Lua script and every pipeline recstream runs is fit for a Redis Cluster.

A Redis Cluster runs a script only on the node of its keys' slot, and redis-py's
cluster client refuses a call whose declared keys span slots. So a script is
cluster-safe when (1) it touches only keys it is given (``KEYS[...]``, never a
name built from ARGV or a literal) and (2) every call gives it keys of one slot
(the stores tag them ``{...}``). (1) is checked here over the source of every
script in ``workers/`` and ``streams/``; (2) by running the stores and a real
worker against a 3-master cluster (test_cluster_stores.py, test_cluster_stream.py),
where the client's slot check turns a cross-slot call into an error, and here,
where such a call is shown to fail. No code sends MULTI (every pipeline is
``transaction=False``), which is checked here too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from tests.cluster.servers import RedisClusterServers
from workers.resources import RedisResource, RedisScript
from workers.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p
    for root in ("workers", "streams")
    for p in (REPO_ROOT / root).rglob("*.py")
    if "training" not in p.parts
)
# Commands that take no key; every other command's first argument is a key.
KEYLESS = {"TIME", "PING", "ECHO"}
_CALL = re.compile(r"redis\.p?call\(\s*(['\"])(\w+)\1\s*(?:,\s*([^,)]+))?")


def lua_scripts() -> dict[str, str]:
    """Every string literal that calls into Redis from Lua, by file:line."""
    found = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "redis.call(" in node.value
            ):
                found[f"{path.relative_to(REPO_ROOT)}:{node.lineno}"] = node.value
    return found


def undeclared_keys(script: str) -> list[str]:
    """The calls of ``script`` whose key is not one of the KEYS it was given."""
    bad = []
    for match in _CALL.finditer(script):
        command, first = match.group(2).upper(), (match.group(3) or "").strip()
        if command in KEYLESS:
            continue
        if not first.startswith("KEYS["):
            bad.append(match.group(0))
    return bad


def test_every_script_touches_only_the_keys_it_is_given() -> None:
    scripts = lua_scripts()
    # state (apply, popularity), catalog (apply, enrich), LLM limits (acquire,
    # settle), LLM budget (reserve): a scan that finds fewer has lost its way.
    assert len(scripts) >= 7, sorted(scripts)
    calls = sum(len(_CALL.findall(s)) for s in scripts.values())
    offenders = {where: bad for where, s in scripts.items() if (bad := undeclared_keys(s))}
    assert not offenders, f"scripts touching keys they are not given: {offenders}"
    print(f"\n{len(scripts)} Lua scripts, {calls} redis.call sites, all on KEYS[...]")


def test_the_script_check_catches_an_undeclared_key() -> None:
    assert undeclared_keys("redis.call('INCR', 'rs:catalog:seq')") == [
        "redis.call('INCR', 'rs:catalog:seq'"
    ]
    assert undeclared_keys("redis.call('ZADD', ARGV[1], 1, 'x')")
    assert not undeclared_keys("local t = redis.call('TIME'); redis.call('GET', KEYS[2])")


def test_no_pipeline_is_a_transaction() -> None:
    """MULTI/EXEC would have to stay in one slot too; recstream sends none."""
    transactional = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"pipeline", "transaction", "multi"}
                # workers.resources passes redis-py's pipeline() arguments through
                and not (
                    isinstance(node.func.value, ast.Call)
                    and isinstance(node.func.value.func, ast.Name)
                    and node.func.value.func.id == "super"
                )
            ):
                flag = next((k.value for k in node.keywords if k.arg == "transaction"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    transactional.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not transactional, f"transactional pipelines: {transactional}"


@pytest.mark.integration
async def test_a_cross_slot_script_call_fails_on_the_cluster(
    cluster_settings: Settings, redis_cluster: RedisClusterServers
) -> None:
    """The cluster check is real: the same script runs with keys of one slot and is
    refused with keys of two, so a store that mixed slots would fail the cluster tests."""
    assert key_slot(b"rs-test:{a}:x") != key_slot(b"rs-test:{b}:x")
    async with RedisResource(cluster_settings.redis) as redis:
        script = RedisScript(
            redis, "redis.call('INCR', KEYS[1]); return redis.call('INCR', KEYS[2])"
        )
        assert await script.run_many([(["rs-test:{a}:x", "rs-test:{a}:y"], [])]) == [1]
        with pytest.raises(RedisClusterException, match="same key slot"):
            await script.run_many([(["rs-test:{a}:x", "rs-test:{b}:x"], [])])
