"""The composition root: every resource opened once, every role's handler built here.

:class:`Runtime` opens, in one exit stack, what the selected roles need:
Redis, the model (ONNX scorer), the LLM pool (only when an endpoint is
configured and a selected role may call it), the catalog view and the
popular-items refresher; then it builds each role's handler over them. The
Kafka edge (``streams``) asks it for ``handler(role)`` and nothing else;
tests use it directly with an in-memory scorer and no Kafka at all.

Closing closes everything in reverse order, background tasks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from workers.candidates import CandidateGenerator, PopularItems
from workers.catalog import CatalogStore, CatalogView, ItemRecord
from workers.chat import ChatHandler
from workers.coldstart import ColdStartHandler
from workers.enrich import EnrichHandler
from workers.explain import ExplainHandler
from workers.handlers import CatalogHandler, InteractionsHandler, RequestsHandler
from workers.outputs import Output, OutputStore
from workers.policy import PolicySettings
from workers.recommend import Recommender, Scorer
from workers.resources import RedisResource, Resource
from workers.roles import Role
from workers.settings import Settings
from workers.state import UserStateStore

__all__ = ["Handler", "PathBudgets", "Runtime"]

logger = logging.getLogger(__name__)

Handler = Callable[[Sequence[Any]], Awaitable[list[Output]]]


class PathBudgets:
    """Each LLM path's share of the pool's token budget per minute (shared via Redis).

    A path that has spent its share is refused at once and falls back; the
    pool's own budget still bounds the total. Without a pool budget
    (``RECSTREAM_LLM_BUDGET_TOKENS_PER_MINUTE`` = 0) shares do not apply.
    """

    def __init__(self, settings: Settings, redis: RedisResource) -> None:
        from workers.llm.budget import BudgetGovernor  # the LLM library, only with an LLM

        total = settings.llm.budget_tokens_per_minute
        shares = {
            "cold": settings.serving.budget_share_cold,
            "chat": settings.serving.budget_share_chat,
            "explain": settings.serving.budget_share_explain,
        }
        self._governors = {
            path: BudgetGovernor(
                tokens_per_minute=int(total * share) if total else 0,
                redis=redis.client,
                key=f"{settings.llm.key_prefix}:share:{path}",
            )
            for path, share in shares.items()
        }

    def governor(self, path: str) -> Any:
        return self._governors[path]


class Runtime(Resource):
    """Opens the resources of ``roles`` and builds their handlers (see module docstring).

    ``scorer`` replaces the ONNX model (tests pass an in-memory one);
    ``llm_transport`` is handed to the LLM pool's HTTP clients (tests may pass
    an ``httpx`` transport; by default the network is used).
    """

    def __init__(
        self,
        settings: Settings,
        roles: Sequence[Role],
        *,
        scorer: Scorer | None = None,
        llm_transport: Any = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.roles = list(roles)
        self._given_scorer = scorer
        self._llm_transport = llm_transport
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: dict[str, Handler] = {}
        self.llm: Any = None  # workers.llm.LLM when an LLM path is open

    def __repr__(self) -> str:
        return f"Runtime(state={self.state.value}, roles={[r.name for r in self.roles]})"

    @property
    def llm_enabled(self) -> bool:
        """An endpoint is configured (the LLM roles then call it; others route to them)."""
        return bool(self.settings.llm.endpoints)

    def handler(self, role: str) -> Handler:
        self._require_open()
        return self._handlers[role]

    async def _open(self) -> None:
        try:
            await self._open_resources()
        except BaseException:
            await self._close()
            raise

    async def _open_resources(self) -> None:
        settings, stack = self.settings, self._stack
        self.redis = await stack.enter_async_context(RedisResource(settings.redis))
        if self._given_scorer is not None:
            self.scorer: Scorer = self._given_scorer
        else:
            from workers.scoring import ModelScorer  # onnxruntime, loaded once per process

            self.scorer = await stack.enter_async_context(ModelScorer(settings.model))
        self.user_state = UserStateStore(self.redis, exclude_kinds=settings.stream.exclude_kinds)
        self.catalog_store = CatalogStore(self.redis)
        self.catalog = CatalogView(self.catalog_store, on_items=self._add_items)
        self.popular = PopularItems(self.redis, self.catalog_store)
        self.candidates = CandidateGenerator(
            self.scorer,
            self.catalog,
            self.popular,
            max_candidates=settings.stream.candidates_max,
            fallback_popular=self.scorer.popular,
        )
        self.outputs = OutputStore(self.redis, ttl_s=settings.serving.output_ttl_s)
        serving = settings.serving
        self.policy = PolicySettings(
            cold_threshold=settings.stream.cold_threshold,
            llm_available=self.llm_enabled,
            llm_cold_start=serving.llm_cold_start,
            llm_chat=serving.llm_chat,
            min_query_chars=serving.min_query_chars,
            chat_complex_at=serving.chat_complex_at,
        )
        self.recommender = Recommender(
            self.scorer, self.user_state, self.candidates, settings.stream, self.policy
        )
        if self.llm_enabled and any(r.awaits_llm for r in self.roles):
            from workers.llm import LLM, LLMPool  # only processes that call an LLM load it

            pool = await stack.enter_async_context(
                LLMPool(settings.llm, redis=self.redis.client, transport=self._llm_transport)
            )
            self.llm = LLM(pool)
            self.budgets = PathBudgets(settings, self.redis)
        await self.catalog.refresh()
        await self.popular.refresh()
        poll_s = settings.stream.catalog_poll_ms / 1000
        self._tasks = [
            asyncio.create_task(self._poll_catalog(poll_s), name="catalog-poll"),
            asyncio.create_task(
                self.candidates.run_refresh(2.0, self._stop), name="popular-refresh"
            ),
        ]
        for role in self.roles:
            self._handlers[role.name] = self._build(role)

    def _build(self, role: Role) -> Handler:
        serving = self.settings.serving
        llm = self.llm

        def budget(path: str) -> Any:
            return self.budgets.governor(path) if llm is not None else None

        common = {"outputs": self.outputs, "serving": serving, "llm": llm}
        handlers: dict[str, Callable[[], Handler]] = {
            "interactions": lambda: InteractionsHandler(
                self.recommender, self.outputs, self.settings.stream
            ),
            "requests": lambda: RequestsHandler(self.recommender, self.outputs, serving),
            "catalog": lambda: CatalogHandler(self.catalog_store, self.catalog),
            "llm": lambda: ColdStartHandler(
                scorer=self.scorer, catalog=self.catalog, budget=budget("cold"), **common
            ),
            "chat": lambda: ChatHandler(
                redis=self.redis,
                scorer=self.scorer,
                catalog=self.catalog,
                user_state=self.user_state,
                popular=self.popular,
                policy=self.policy,
                budget=budget("chat"),
                **common,
            ),
            "explain": lambda: ExplainHandler(
                scorer=self.scorer,
                catalog=self.catalog,
                user_state=self.user_state,
                popular=self.popular,
                budget=budget("explain"),
                **common,
            ),
            "enrich": lambda: EnrichHandler(
                store=self.catalog_store,
                scorer=self.scorer,
                serving=serving,
                llm=llm,
                budget=budget("explain"),
            ),
        }
        if role.name not in handlers:
            raise ValueError(f"no handler for role {role.name!r}")
        return handlers[role.name]()

    def set_emitter(self, emit: Callable[[list[Output]], Awaitable[None]]) -> None:
        """How handlers send outputs made outside a batch (the requests role's
        deadline guard); the Kafka edge calls this once its producer is open."""
        for handler in self._handlers.values():
            if hasattr(handler, "emit"):
                handler.emit = emit

    async def _close(self) -> None:
        self._stop.set()
        for handler in self._handlers.values():
            close = getattr(handler, "aclose", None)
            if close is not None:
                await close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    async def _add_items(self, records: list[ItemRecord]) -> None:
        await self.scorer.add_items([r.item_id for r in records], [r.text for r in records])

    async def _poll_catalog(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                await self.catalog.refresh()
            except Exception:
                logger.warning("catalog refresh failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval_s)
