"""One lifecycle for every I/O resource: the ``Resource`` base (workers/resources.py).

The composition root opens the ONNX scorer, the LLM pool and Redis in one exit
stack, and tests open the LLM test server the same way; none of them may keep
a hand-written ``start``/``open``/``__aenter__`` of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from streams.kafka import KafkaProducerResource
from workers.errors import ResourceClosedError
from workers.llm import LLMPool, LLMSettings
from workers.model import Scorer
from workers.resources import RedisResource, Resource, ResourceState
from workers.runtime import Runtime
from workers.scoring import ModelScorer
from workers.testing.llm_server import LLMTestServer

ROOT = Path(__file__).resolve().parents[2]
_LIFECYCLE = {"__aenter__", "__aexit__", "open", "start", "aclose"}


@pytest.mark.parametrize(
    "cls",
    [Scorer, ModelScorer, LLMPool, LLMTestServer, RedisResource, KafkaProducerResource, Runtime],
)
def test_resources_share_the_base(cls: type) -> None:
    assert issubclass(cls, Resource)
    own = _LIFECYCLE & set(vars(cls))
    assert not own, f"{cls.__name__} redefines {sorted(own)}; implement _open/_close instead"


def test_no_hand_written_async_lifecycle_left() -> None:
    """No class outside the base defines its own async context manager or async
    open/start (a handler's ``aclose``, closed by the Runtime, is not a lifecycle)."""
    offenders = []
    for folder in ("workers", "streams", "benchmarks", "deploy"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "resources.py" and path.parent.name == "workers":
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                for item in node.body:
                    if isinstance(item, ast.AsyncFunctionDef) and item.name in {
                        "__aenter__",
                        "__aexit__",
                        "open",
                        "start",
                    }:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.name}.{item.name}")
    assert offenders == []


async def test_test_server_lifecycle() -> None:
    server = LLMTestServer()
    assert server.state is ResourceState.NEW
    async with server as opened:
        assert opened is server and server.port != 0
        async with httpx.AsyncClient() as client:
            health = await client.get(server.url.removesuffix("/v1") + "/health")
        assert health.status_code == 200
        with pytest.raises(ResourceClosedError):
            await server.open()
    await server.aclose()  # closing twice is safe
    assert server.state is ResourceState.CLOSED
    with pytest.raises(ResourceClosedError):
        async with server:
            pass


async def test_pool_lifecycle() -> None:
    pool = LLMPool(LLMSettings())
    async with pool:
        assert pool.state is ResourceState.OPEN
        with pytest.raises(ResourceClosedError):
            await pool.open()
    await pool.aclose()
    with pytest.raises(ResourceClosedError):
        async with pool:
            pass
