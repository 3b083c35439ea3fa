"""``recstream infra``: the local Kafka + Redis (wraps deploy/local/infra.sh)."""

from __future__ import annotations

import argparse
import subprocess

from workers.settings import REPO_ROOT

__all__ = ["main"]

SCRIPT = REPO_ROOT / "deploy" / "local" / "infra.sh"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream infra",
        description="Start, stop or inspect the local single-node Kafka (KRaft, jars from Maven "
        "Central) and redis-server on loopback. Logs: $RECSTREAM_HOME/logs.",
    )
    parser.add_argument("action", choices=["up", "down", "status", "clean", "jars"])
    args = parser.parse_args(argv)
    return subprocess.call(["bash", str(SCRIPT), args.action])
