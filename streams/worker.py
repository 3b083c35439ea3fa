"""``recstream worker``: run the stream processors of one or more roles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from typing import NoReturn

import faust
from aiokafka.errors import KafkaError

from contracts import RecstreamError
from streams.app import BatchProcessor, Health, create_app
from streams.dependencies import DependencyWatch, install_repeat_filter, wait_until_reachable
from streams.jsonlog import worker_logging_config
from streams.kafka import KafkaProducerResource, ensure_topics
from workers.errors import ModelError
from workers.model.manifest import load_manifest
from workers.roles import ALL, ROLES, Role, resolve
from workers.runtime import Runtime
from workers.settings import Settings

__all__ = ["main", "run_worker"]

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, roles: list[Role], *, loglevel: str = "INFO") -> int:
    """Build the app for ``roles`` and run it until SIGTERM/SIGINT.

    Start-up order: wait for Kafka and Redis (probes answer meanwhile), then
    faust; the first agent opens the resources (retrying what is retriable,
    exiting with one clear line on what is not), then a watch keeps probing the
    broker and Redis for ``/readyz``.
    """
    health = Health()
    stack = contextlib.AsyncExitStack()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # faust's worker runs on this same loop afterwards
    loop.run_until_complete(wait_until_reachable(settings))

    async def open_once() -> BatchProcessor:
        # Open into a local stack first: if anything fails, what did open is closed.
        async with contextlib.AsyncExitStack() as opening:
            await ensure_topics(settings.kafka)
            runtime = await opening.enter_async_context(Runtime(settings, roles))
            producer = await opening.enter_async_context(KafkaProducerResource(settings.kafka))
            watch = DependencyWatch(
                {
                    "kafka": producer.producer.client.fetch_all_metadata,
                    "redis": runtime.redis.client.ping,
                }
            )
            watch.failing = health.failing  # the probes write where /readyz reads
            watch.start()
            opening.push_async_callback(watch.stop)
            stack.push_async_callback(opening.pop_all().aclose)
        logger.info(
            "worker ready: roles=%s model=%s llm=%s",
            [r.name for r in roles],
            runtime.scorer.version,
            "on" if runtime.llm is not None else "off",
        )
        handlers = {r.name: runtime.handler(r.name) for r in roles}
        processor = BatchProcessor(handlers, producer, health, settings)
        runtime.set_emitter(processor.send_outputs)
        return processor

    async def factory() -> BatchProcessor:
        # faust has configured logging by now: fold repeated client warnings, and let
        # the pool's one line per LLM call stand for httpx's per-request lines.
        install_repeat_filter()
        logging.getLogger("httpx").setLevel(logging.WARNING)
        delay = 0.5
        while True:
            try:
                processor = await open_once()
                health.waiting_for = ""
                return processor
            except RecstreamError as exc:
                if not exc.retriable:
                    fatal(f"cannot start: {exc}")
                reason = f"{type(exc).__name__}: {exc}"
            except (OSError, KafkaError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            health.waiting_for = reason[:300]
            logger.warning("start-up: %s; retrying in %.1fs", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    app = create_app(settings, roles, factory, health)
    app.closers.append(stack.aclose)

    worker = faust.Worker(
        app,
        loop=loop,
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


def fatal(message: str) -> NoReturn:
    """Log one clear line and end the process with status 2 (a misconfiguration:
    restarting cannot help, so faust's agent restart loop must not run)."""
    logger.critical("%s", message)
    print(f"recstream worker: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream worker",
        description="Consume input topics and emit recommendations. Each role is its own "
        "consumer group (scale roles apart); several roles in one process share one group, "
        "except roles on the batch edge ($RECSTREAM_BATCH_EDGE_ROLES, default interactions), "
        "which keep their own; "
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
    roles = resolve(args.role)
    try:
        load_manifest(settings.model.model_dir)  # a missing model is fatal: say so now
    except ModelError as exc:
        print(f"recstream worker: {exc}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0]]  # faust's worker parses argv; ours is already parsed
    return run_worker(settings, roles, loglevel=settings.log_level)
