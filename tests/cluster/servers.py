"""A private Redis Cluster of three masters on loopback, for the cluster tests.

Three ``redis-server --cluster-enabled yes`` processes on free ports (each
with its cluster bus on a second free port), their data in a temporary
folder, joined by ``redis-cli --cluster create --cluster-replicas 0``; both
programs come from the packages ``scripts/bootstrap`` installs
(redis-server, redis-tools). :meth:`RedisClusterServers.stop` ends the
processes it started, by their pids.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.streams.harness import free_port

__all__ = ["RedisClusterServers"]


@dataclass
class RedisClusterServers:
    workdir: Path
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any one node: the client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def cli(self, port: int, *args: str, timeout: float = 30) -> str:
        proc = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        return proc.stdout + proc.stderr

    @classmethod
    def start(cls, workdir: Path, masters: int = 3) -> RedisClusterServers:
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing: run scripts/bootstrap")
        servers = cls(workdir)
        try:
            for n in range(masters):
                port, bus = free_port(), free_port()
                node = workdir / f"node{n}"
                node.mkdir(parents=True, exist_ok=True)
                servers.ports.append(port)
                servers.processes.append(
                    subprocess.Popen(
                        [
                            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--cluster-enabled", "yes", "--cluster-port", str(bus),
                            "--cluster-config-file", str(node / "nodes.conf"),
                            "--cluster-node-timeout", "5000",
                            "--dir", str(node), "--save", "", "--appendonly", "no",
                            "--logfile", str(node / "redis.log"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
            for port in servers.ports:
                servers._wait(lambda p=port: "PONG" in servers.cli(p, "ping"), "redis-server up")
            created = subprocess.run(
                [
                    "redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{p}" for p in servers.ports),
                    "--cluster-replicas", "0", "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )  # fmt: skip
            if created.returncode != 0:
                raise RuntimeError(f"cluster create failed:\n{created.stdout}{created.stderr}")
            # Every node must agree that all 16384 slots are served before a client
            # connects (gossip takes a moment after the create command returns).
            for port in servers.ports:
                servers._wait(
                    lambda p=port: "cluster_state:ok" in servers.cli(p, "cluster", "info"),
                    "cluster state ok",
                )
        except BaseException:
            servers.stop()
            raise
        return servers

    def _wait(self, ok: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a redis-server exited ({what}):\n{self.logs()}")
            if ok():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def flush(self) -> None:
        """Empty every master (each holds its own slots' keys)."""
        for port in self.ports:
            self.cli(port, "flushall")

    def all_keys(self) -> list[str]:
        """Every key of every master (SCAN; for tests, not for big data sets)."""
        return [k for port in self.ports for k in self.cli(port, "--scan").split()]

    def keys_per_node(self) -> list[int]:
        return [int(self.cli(port, "dbsize").strip() or 0) for port in self.ports]

    def logs(self) -> str:
        out = []
        for log in sorted(self.workdir.glob("node*/redis.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {log}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
