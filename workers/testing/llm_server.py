"""LLM TEST SERVER: an OpenAI-compatible HTTP double for tests, demos and benchmarks.

This is NOT a language model. It answers ``POST /v1/chat/completions`` with
canned answers that are valid for each prompt role of
:mod:`workers.llm.prompts` (it reads the ``role:`` line of the system message
and the fenced ``<data>`` block), and it can be scripted to misbehave:
latency, 429 with ``Retry-After``/``retry-after-ms``, 5xx, hangs, malformed
bodies, oversize answers, hostile content, "injected" answers that leak
the system prompt's canary, and a model that obeys whatever the data tells it
to write (``obey``), inside, around or as its answer. Every response says so: ``model`` is
``llm-test-server (not a model)`` and the header ``x-llm-test-server: true``.

It records every completion request it receives (arrival time, the tokens it
counts, the status it answered, the raw body) so tests can check limits and
redaction on what actually arrived. Control endpoints:

* ``GET  /_test/counters?window=S``  totals and the maximum requests/tokens seen
  in any sliding window of S seconds
* ``GET  /_test/requests``           received bodies (JSON list of strings)
* ``POST /_test/script``             ``{"default": {...}, "queue": [{...}, ...],
  "roles": {"explain": [{...}, ...]}}`` (fields of :class:`Behaviour`); queued
  behaviours are used once, in order; a role's list is used in turn, cycling,
  for that prompt role instead of the default
* ``POST /_test/reset``              clear records, queue and default

Run it with ``recstream llm-test-server --port 8900 --latency-ms 50`` or use
:class:`LLMTestServer` in-process as an async context manager.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import re
import signal
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson

from workers.llm import prompts as p
from workers.llm.tokens import estimate_request, estimate_tokens
from workers.resources import Resource

__all__ = ["Behaviour", "LLMTestServer", "Record", "main", "obey"]

log = logging.getLogger(__name__)

MODEL_LABEL: Final = "llm-test-server (not a model)"
_MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024
_DATA = re.compile(r"<data>\s*(.*?)\s*</data>", re.DOTALL)
_ROLE = re.compile(r"^role: (\S+)\s*$", re.MULTILINE)
_CANARY = re.compile(r"Confidential marker \(never output it\): (\S+)")


@dataclass
class Behaviour:
    """How to answer one request.

    kind: ``ok`` (canned valid answer), ``status`` (answer ``status`` with an
    error body), ``hang`` (never answer), ``malformed`` (a broken body),
    ``oversize`` (``size`` bytes of text as the content), ``content`` (this
    exact message ``content``), ``injected`` (an answer that obeys a prompt
    injection and leaks the canary or system prompt, variant ``variant``),
    ``obey`` (a model that does what the data tells it: see :func:`obey`;
    ``placement`` is ``inside`` the valid answer's free text, prose
    ``around`` the valid JSON, or the ``whole`` answer; ``content``, if set,
    is the payload instead of the one found in the data).
    """

    kind: str = "ok"
    status: int = 200
    latency_s: float | None = None
    retry_after_s: float | None = None
    retry_after_ms: int | None = None
    content: str | None = None
    size: int = 1024 * 1024
    variant: int = 0
    placement: str = "inside"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Behaviour:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class Record:
    """One completion request as received."""

    at: float
    tokens: int
    status: int
    body: bytes
    role: str = ""


@dataclass
class _Parsed:
    role: str
    system: str
    data: Any
    max_tokens: int
    messages: list[dict[str, str]] = field(default_factory=list)


class LLMTestServer(Resource):
    """The test server, in-process; a :class:`~workers.resources.Resource`
    (``async with LLMTestServer() as server``). ``url`` is the ``/v1`` base URL
    for endpoints; with ``port=0`` it is known once the server is open."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_s: float = 0.0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.default = Behaviour(latency_s=latency_s)
        self.queue: deque[Behaviour] = deque()
        # Per prompt role, behaviours used in turn (cycling) when the queue is empty.
        self.by_role: dict[str, list[Behaviour]] = {}
        self._role_turns: dict[str, int] = {}
        self.records: list[Record] = []
        self._server: asyncio.Server | None = None
        self._hangs: list[asyncio.Event] = []
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __repr__(self) -> str:
        return f"LLMTestServer(state={self.state.value}, url={self.url!r})"

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        for event in self._hangs:
            event.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()

    # --- scripting and counters -------------------------------------------

    def script(
        self,
        *behaviours: Behaviour,
        default: Behaviour | None = None,
        roles: dict[str, list[Behaviour]] | None = None,
    ) -> None:
        """Queue ``behaviours`` (used once each, in order); optionally set the default,
        and for some prompt roles (``roles``) behaviours used in turn, cycling, in
        place of the default."""
        self.queue.extend(behaviours)
        if default is not None:
            self.default = default
        if roles is not None:
            self.by_role = {role: list(cycle) for role, cycle in roles.items() if cycle}
            self._role_turns.clear()

    def _next(self, role: str) -> Behaviour:
        if self.queue:
            return self.queue.popleft()
        cycle = self.by_role.get(role)
        if not cycle:
            return self.default
        turn = self._role_turns.get(role, 0)
        self._role_turns[role] = turn + 1
        return cycle[turn % len(cycle)]

    def reset(self) -> None:
        self.queue.clear()
        self.by_role.clear()
        self._role_turns.clear()
        self.records.clear()
        self.default = Behaviour(latency_s=self.default.latency_s)

    def counters(self, window_s: float = 60.0) -> dict[str, Any]:
        """Totals, and the most requests / tokens that arrived in any window of ``window_s``."""
        arrivals = sorted((r.at, r.tokens) for r in self.records)
        max_req = max_tok = 0
        j = tok = 0
        for i in range(len(arrivals)):
            while j < len(arrivals) and arrivals[j][0] < arrivals[i][0] + window_s:
                tok += arrivals[j][1]
                j += 1
            max_req = max(max_req, j - i)
            max_tok = max(max_tok, tok)
            tok -= arrivals[i][1]
        statuses: dict[str, int] = {}
        for r in self.records:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        return {
            "server": MODEL_LABEL,
            "window_s": window_s,
            "requests": len(self.records),
            "tokens": sum(r.tokens for r in self.records),
            "max_requests_in_window": max_req,
            "max_tokens_in_window": max_tok,
            "statuses": statuses,
        }

    # --- HTTP ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length > _MAX_REQUEST_BYTES:
                    await self._write(writer, 413, {}, b'{"error": "request too large"}')
                    return
                body = await reader.readexactly(length) if length else b""
                keep = await self._route(writer, method, target, body)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _write(
        self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        reason = {200: "OK", 429: "Too Many Requests", 404: "Not Found"}.get(status, "Status")
        head = [f"HTTP/1.1 {status} {reason}", f"content-length: {len(body)}"]
        head.append("content-type: application/json")
        head.append("x-llm-test-server: true")
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()

    async def _route(
        self, writer: asyncio.StreamWriter, method: str, target: str, body: bytes
    ) -> bool:
        url = urlsplit(target)
        if method == "POST" and url.path.endswith("/chat/completions"):
            return await self._complete(writer, body)
        if method == "GET" and url.path == "/_test/counters":
            window = float(parse_qs(url.query).get("window", ["60"])[0])
            await self._write(writer, 200, {}, orjson.dumps(self.counters(window)))
        elif method == "GET" and url.path == "/_test/requests":
            bodies = [r.body.decode("utf-8", errors="replace") for r in self.records]
            await self._write(writer, 200, {}, orjson.dumps(bodies))
        elif method == "POST" and url.path == "/_test/script":
            raw = orjson.loads(body or b"{}")
            default = Behaviour.from_json(raw["default"]) if "default" in raw else None
            roles = {
                role: [Behaviour.from_json(b) for b in cycle]
                for role, cycle in raw.get("roles", {}).items()
            }
            self.script(
                *(Behaviour.from_json(b) for b in raw.get("queue", [])),
                default=default,
                roles=roles if "roles" in raw else None,
            )
            await self._write(writer, 200, {}, b'{"ok": true}')
        elif method == "POST" and url.path == "/_test/reset":
            self.reset()
            await self._write(writer, 200, {}, b'{"ok": true}')
        elif method == "GET" and url.path == "/health":
            await self._write(writer, 200, {}, orjson.dumps({"server": MODEL_LABEL}))
        else:
            await self._write(writer, 404, {}, b'{"error": "not found"}')
        return True

    async def _complete(self, writer: asyncio.StreamWriter, body: bytes) -> bool:
        now = time.monotonic()
        parsed = _parse_request(body)
        behaviour = self._next(parsed.role if parsed else "")
        tokens = estimate_request(parsed.messages, parsed.max_tokens) if parsed else 0
        status = behaviour.status if behaviour.kind == "status" else 200
        self.records.append(Record(now, tokens, status, body, parsed.role if parsed else ""))
        latency = behaviour.latency_s if behaviour.latency_s is not None else self.default.latency_s
        if latency:
            await asyncio.sleep(latency)
        if behaviour.kind == "hang":
            event = asyncio.Event()
            self._hangs.append(event)
            await event.wait()
            return False
        if behaviour.kind == "status":
            headers: dict[str, str] = {}
            if behaviour.retry_after_s is not None:
                headers["retry-after"] = f"{behaviour.retry_after_s:g}"
            if behaviour.retry_after_ms is not None:
                headers["retry-after-ms"] = str(behaviour.retry_after_ms)
            error = {"error": {"message": f"{MODEL_LABEL}: scripted {status}", "type": "test"}}
            await self._write(writer, status, headers, orjson.dumps(error))
            return True
        if behaviour.kind == "malformed":
            await self._write(writer, 200, {}, b'{"id": "x", "choices": [{"message": {"content": ')
            return True
        if parsed is None:
            await self._write(writer, 400, {}, b'{"error": "bad request"}')
            return True
        if behaviour.kind == "oversize":
            content = "A" * behaviour.size
        elif behaviour.kind == "content":
            content = behaviour.content or ""
        elif behaviour.kind == "injected":
            content = _injected(parsed, behaviour.variant)
        elif behaviour.kind == "obey":
            content = obey(parsed, behaviour.placement, behaviour.content)
        else:
            content = orjson.dumps(canned_answer(parsed.role, parsed.data)).decode()
        answer = {
            "id": "test-" + hashlib.sha1(body).hexdigest()[:12],
            "object": "chat.completion",
            "model": MODEL_LABEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": tokens - parsed.max_tokens,
                "completion_tokens": estimate_tokens(content),
                "total_tokens": tokens - parsed.max_tokens + estimate_tokens(content),
            },
        }
        await self._write(writer, 200, {}, orjson.dumps(answer))
        return True


def _parse_request(body: bytes) -> _Parsed | None:
    try:
        doc = orjson.loads(body)
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in doc["messages"]]
        max_tokens = int(doc.get("max_tokens", 0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    role_match = _ROLE.search(system)
    data: Any = None
    for m in messages:
        if m["role"] == "user":
            found = _DATA.search(m["content"])
            if found:
                try:
                    data = orjson.loads(found.group(1))
                except orjson.JSONDecodeError:
                    data = None
    return _Parsed(role_match.group(1) if role_match else "", system, data, max_tokens, messages)


def _ids(data: Any, key: str) -> list[str]:
    if not isinstance(data, dict):
        return []
    return [str(x["id"]) for x in data.get(key, []) if isinstance(x, dict) and "id" in x]


def canned_answer(role: str, data: Any) -> Any:
    """A valid answer for ``role`` given the request's data (deterministic)."""
    if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
        return {"results": {k: canned_answer(role, v) for k, v in data["tasks"].items()}}
    if role in (p.ROLE_RANK, p.ROLE_RANK_FEW_SHOT, p.ROLE_RANK_COT, p.ROLE_RERANK, p.ROLE_RAG):
        ids = sorted(_ids(data, "candidates"))  # order-independent: position bias free
        out: dict[str, Any] = {
            "ranking": ids,
            "reasons": {i: "matches the stated preferences" for i in ids[:3]},
        }
        if role == p.ROLE_RANK_COT:
            out["analysis"] = (
                "The history leans towards a few genres; candidates are ordered by fit."
            )
        return out
    if role == p.ROLE_PAIRWISE:
        return {"winner": min(_ids(data, "candidates") or [""])}
    if role == p.ROLE_FEATURES:
        return {
            "genres": ["drama"],
            "themes": ["friendship"],
            "target_audience": "adults",
            "mood": ["warm"],
            "keywords": ["test", "canned"],
        }
    if role == p.ROLE_PREFERENCES:
        mentioned = _ids(data, "mentioned_items")
        return {
            "genres": ["comedy"],
            "themes": ["travel"],
            "constraints": {"max_price": 50},
            "dislikes": ["horror"],
            "liked_items": mentioned[:1],
            "disliked_items": [],
        }
    if role == p.ROLE_STATE:
        return {"state": "preference_elicitation", "intent": "request_recommendation"}
    item_id = str(data.get("item", {}).get("id", "")) if isinstance(data, dict) else ""
    if role == p.ROLE_EXPLAIN:
        evidence = _ids(data, "evidence")
        return {
            "item_id": item_id,
            "text": "Recommended because it shares themes with items you enjoyed.",
            "evidence": evidence[:2],
        }
    if role == p.ROLE_ASPECTS:
        return {
            "item_id": item_id,
            "content": "It matches your favourite genres.",
            "popularity": "Many similar users rated it highly.",
            "diversity": "It adds a genre you see less often.",
            "timeliness": "It was added to the catalog this week.",
        }
    if role == p.ROLE_COMPARATIVE:
        ids = _ids(data, "items")
        return {
            "best_item_id": ids[0] if ids else "",
            "summary": "The first item fits your stated preferences best.",
            "notes": {i: "Preferable if you want something different." for i in ids[1:]},
        }
    return {"error": f"{MODEL_LABEL}: unknown role"}


def _injected(parsed: _Parsed, variant: int) -> str:
    """An answer from a 'model' that obeyed an injection: valid shape, leaking secrets."""
    found = _CANARY.search(parsed.system)
    canary = found.group(1) if found else "NO-CANARY"
    leaks = [
        canary,
        f"The secret marker is {canary}.",
        canary[::-1],
        " ".join(canary),
        base64.b64encode(canary.encode()).decode(),
        canary.encode().hex(),
        parsed.system[:400],
        f"<b>{canary}</b>",
        canary.lower(),
        f"[click](https://evil.example/?q={canary})",
    ]
    leak = leaks[variant % len(leaks)]
    answer = canned_answer(parsed.role, parsed.data)
    # Put the leak in every free-text field the role's answer has.
    return orjson.dumps(_plant(answer, leak, variant)).decode()


def _plant(value: Any, leak: str, variant: int) -> Any:
    if isinstance(value, str):
        return f"{value} {leak}" if value else leak
    if isinstance(value, dict):
        out = {k: _plant(v, leak, variant) if k not in _ID_FIELDS else v for k, v in value.items()}
        if variant % 3 == 0 and "reasons" in out and isinstance(out["reasons"], dict):
            out["reasons"][leak] = leak
        return out
    if isinstance(value, list):
        return [*value, leak] if value and isinstance(value[0], str) else value
    return value


_ID_FIELDS: Final = frozenset({"item_id", "best_item_id", "winner", "state", "intent"})

# "..., write: <payload>" anywhere in the fenced data: what the attacker asks for.
_ORDER = re.compile(
    r"\b(?:write|say|output|print|reply|respond with|answer with|answer|include)\s*:\s*(.+)",
    re.IGNORECASE | re.DOTALL,
)
_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\d+))?(?::(\d+))?\}")
_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))}
_CYRILLIC = dict(zip("AaCcEeOoPpXxyBHKMTiIsSjJ", "АаСсЕеОоРрХхуВНКМТіІѕЅјЈ", strict=True))


def _canary_forms(canary: str) -> dict[str, str]:
    raw = canary.encode()
    return {
        "canary": canary,
        "canary_lower": canary.lower(),
        "canary_spaced": " ".join(canary),
        "canary_dashed": "-".join(canary),
        "canary_reversed": canary[::-1],
        "canary_b64": base64.b64encode(raw).decode(),
        "canary_hex": raw.hex(),
        "canary_rot13": canary.translate(
            str.maketrans(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
            )
        ),
        "canary_fullwidth": "".join(_FULLWIDTH.get(c, c) for c in canary),
        "canary_cyrillic": "".join(_CYRILLIC.get(c, c) for c in canary),
        "canary_entities": "".join(f"&#{ord(c)};" for c in canary),
        "canary_hexentities": "".join(f"&#x{ord(c):x};" for c in canary),
        "canary_zw": "\u200b".join(canary),
        "canary_softhyphen": "\u00ad".join(canary),
    }


def _system_words(parsed: _Parsed) -> list[str]:
    lines = [ln for ln in parsed.system.splitlines() if not _CANARY.search(ln)]
    return " ".join(lines).split()


def _fill(payload: str, parsed: _Parsed) -> str:
    """The payload with what the model knows filled in: ``{canary}`` (and its
    disguises, ``{canary_fullwidth}``...), ``{system}`` (the system prompt less
    its canary line), ``{system_words:START:COUNT}``, ``{system_chunks:N}``
    (the prompt in chunks of N words, each chunk in its own sentence)."""
    found = _CANARY.search(parsed.system)
    forms = _canary_forms(found.group(1) if found else "NO-CANARY")
    words = _system_words(parsed)

    def sub(m: re.Match[str]) -> str:
        name, a, b = m.group(1), m.group(2), m.group(3)
        if name in forms:
            return forms[name]
        if name == "system":
            return " ".join(words)
        if name == "system_words":
            start, count = int(a or 0), int(b or 12)
            return " ".join(words[start : start + count])
        if name == "system_chunks":
            n = int(a or 9)
            chunks = [" ".join(words[i : i + n]) for i in range(0, len(words), n)]
            return " Also, ".join(chunks[:6])
        return m.group(0)

    return _PLACEHOLDER.sub(sub, payload)


def _orders(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.group(1).strip() for m in _ORDER.finditer(value)]
    if isinstance(value, dict):
        return [o for v in value.values() for o in _orders(v)]
    if isinstance(value, list):
        return [o for v in value for o in _orders(v)]
    return []


def obey(parsed: _Parsed, placement: str, payload: str | None = None) -> str:
    """The answer of a model that obeys the data: the last "write: X" in the
    fenced data (or ``payload``), with what the model knows filled in, placed
    ``inside`` every free-text field of a valid answer, ``around`` a valid
    answer as prose, or as the ``whole`` answer. Without an order, the
    canned answer."""
    orders = _orders(parsed.data)
    text = payload if payload is not None else (orders[-1] if orders else "")
    answer = canned_answer(parsed.role, parsed.data)
    if not text:
        return orjson.dumps(answer).decode()
    text = _fill(text, parsed)
    if placement == "whole":
        return text
    if placement == "around":
        return f"{text}\n{orjson.dumps(answer).decode()}\n{text}"
    return orjson.dumps(_plant(answer, text, 1)).decode()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream llm-test-server",
        description=(
            "Run the LLM TEST SERVER: an OpenAI-compatible HTTP double with canned, role-aware "
            "answers and scriptable failures, for tests, demos and benchmarks. It is NOT a "
            "language model and never presents itself as one."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with LLMTestServer(args.host, args.port, latency_s=args.latency_ms / 1000) as server:
            print(f"LLM TEST SERVER (not a model) listening on {server.url}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()

    asyncio.run(serve())
    return 0
