"""The ``recstream`` command: one entry point, subcommands loaded lazily.

Each subcommand lives in the package that owns its job and exposes
``main(argv: list[str]) -> int``; this module only dispatches, so
``recstream --help`` stays fast and needs neither torch nor a broker.
"""

from __future__ import annotations

import importlib
import sys
from typing import Final

from workers.errors import ConfigError

__all__ = ["main"]

# name -> (module providing main(argv), one-line help)
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "infra": ("streams.infra", "start/stop/inspect the local Kafka + Redis (dev and CI)"),
    "topics": ("streams.topics", "create recstream's topics explicitly (never auto-created)"),
    "worker": (
        "streams.worker",
        "run stream processors: --role interactions|catalog|requests|chat|all",
    ),
    "train": (
        "workers.model.cli_train",
        "train SASRec + A-LLMRec on MovieLens-100k (training venv)",
    ),
    "evaluate": (
        "workers.model.cli_evaluate",
        "evaluate baselines and A-LLMRec; print protocol + metrics",
    ),
    "export": ("workers.model.cli_export", "export trained models to ONNX with parity checks"),
    "llm-test-server": (
        "workers.testing.llm_server",
        "run the OpenAI-compatible LLM TEST server (not a model)",
    ),
    "llm-local": ("streams.llm_local", "fetch + serve a real small LLM on loopback (OpenAI API)"),
    "replay": ("streams.replay", "replay MovieLens-100k into Kafka at a chosen rate"),
    "tail": ("streams.tail", "print an output topic in readable form"),
    "demo": ("streams.demo", "run the whole system end to end on the embedded default"),
    "bench": ("streams.bench", "benchmark report (JSON, Markdown, plots); needs a source checkout"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: recstream <command> [options]",
        "",
        "Event-driven streaming recommender: Kafka in, Redis state, ONNX A-LLMRec",
        "scoring, LLM calls only where they pay.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'recstream <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"recstream: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"recstream: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    try:
        result: int = module.main(rest)
    except ConfigError as exc:  # a bad environment value: one line, no traceback
        print(f"recstream {name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
