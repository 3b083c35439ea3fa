"""``recstream worker``: run the stream processors of one or more roles."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

import faust

from streams.app import BatchProcessor, Health, create_app
from streams.jsonlog import worker_logging_config
from streams.kafka import KafkaProducerResource, ensure_topics
from workers.roles import ALL, ROLES, Role, resolve
from workers.runtime import Runtime
from workers.settings import Settings

__all__ = ["main", "run_worker"]

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, roles: list[Role], *, loglevel: str = "INFO") -> int:
    """Build the app for ``roles`` and run it until SIGTERM/SIGINT."""
    health = Health()
    stack = contextlib.AsyncExitStack()

    async def factory() -> BatchProcessor:
        # One line per LLM call comes from the pool; httpx's per-request INFO lines
        # would double it (set here: faust configures logging when the worker starts).
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # Open into a local stack first: if anything fails, what did open is
        # closed at once (faust restarts the agent, which calls us again).
        async with contextlib.AsyncExitStack() as opening:
            await ensure_topics(settings.kafka)
            runtime = await opening.enter_async_context(Runtime(settings, roles))
            producer = await opening.enter_async_context(KafkaProducerResource(settings.kafka))
            stack.push_async_callback(opening.pop_all().aclose)
        logger.info(
            "worker ready: roles=%s model=%s llm=%s",
            [r.name for r in roles],
            runtime.scorer.version,
            "on" if runtime.llm is not None else "off",
        )
        handlers = {r.name: runtime.handler(r.name) for r in roles}
        return BatchProcessor(handlers, producer, health, settings)

    app = create_app(settings, roles, factory, health)
    app.closers.append(stack.aclose)

    worker = faust.Worker(
        app,
        loglevel=loglevel,
        redirect_stdouts=False,
        override_logging=True,
        logging_config=worker_logging_config(settings.log_format, loglevel),
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode's worker always ends by raising SystemExit
        return int(exc.code or 0)
    return 0  # type: ignore[unreachable]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream worker",
        description="Consume input topics and emit recommendations. Each role is its own "
        "consumer group (scale roles apart); several roles in one process share one group; "
        "'all' runs every role in one process. Exposes "
        "/healthz, /readyz and /metrics on $RECSTREAM_WEB_BIND:$RECSTREAM_WEB_PORT (default "
        "127.0.0.1:6066).",
    )
    roles_help = "; ".join(f"{r.name}: {r.description}" for r in ROLES.values())
    parser.add_argument(
        "--role",
        action="append",
        choices=[*ROLES, ALL],
        required=True,
        help=f"role(s) to run; repeat for several, or '{ALL}'. {roles_help}",
    )
    parser.add_argument("--web-port", type=int, default=None, help="override RECSTREAM_WEB_PORT")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.web_port is not None:
        import dataclasses

        settings = dataclasses.replace(
            settings, stream=dataclasses.replace(settings.stream, web_port=args.web_port)
        )
    sys.argv = [sys.argv[0]]  # faust's worker parses argv; ours is already parsed
    return run_worker(settings, resolve(args.role), loglevel=settings.log_level)
