"""All of recstream's configuration, read from the environment in one place.

No other module reads ``os.environ``: sections (Kafka, Redis, model, LLM...)
are frozen dataclasses built by :meth:`Settings.from_env`, and each section's
``from_mapping`` takes the environment as a plain mapping so tests can pass
their own. Secrets are wrapped in :class:`Secret` and never appear in ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from workers.env import (
    PREFIX,
    REPO_ROOT,
    Secret,
    env_bool,
    env_float,
    env_int,
    env_secret,
    env_str,
)
from workers.errors import ConfigError
from workers.roles import ROLES

if TYPE_CHECKING:
    from workers.llm.settings import LLMSettings
    from workers.model.settings import ModelSettings

__all__ = [
    "PREFIX",
    "REPO_ROOT",
    "KafkaSettings",
    "RedisSettings",
    "Secret",
    "ServingSettings",
    "Settings",
    "StreamSettings",
    "env_bool",
    "env_float",
    "env_int",
    "env_secret",
    "env_str",
]


_KAFKA_PROTOCOLS: Final = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})
_SASL_MECHANISMS: Final = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and how topics are named and created."""

    bootstrap_servers: str = "127.0.0.1:9092"
    # A prefix lets several environments (or test runs) share one cluster.
    topic_prefix: str = ""
    # 6 partitions: enough to spread over a few replicas per role in dev, few
    # enough that a single-node broker stays quick to start and rebalance.
    partitions: int = 6
    replication_factor: int = 1
    client_id: str = "recstream"
    # Transport security: PLAINTEXT (dev), SSL, SASL_PLAINTEXT or SASL_SSL
    # (production: SASL_SSL with SCRAM-SHA-512, one SCRAM user per role). The
    # password comes from a mounted Secret file (KAFKA_SASL_PASSWORD_FILE).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    # PEM files; empty CA file = the system trust store. Cert + key = mutual TLS.
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        if self.security_protocol not in _KAFKA_PROTOCOLS:
            raise ConfigError(
                f"{PREFIX}KAFKA_SECURITY_PROTOCOL must be one of {sorted(_KAFKA_PROTOCOLS)}, "
                f"got {self.security_protocol!r}"
            )
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism not in _SASL_MECHANISMS:
                raise ConfigError(
                    f"{PREFIX}KAFKA_SASL_MECHANISM must be one of {sorted(_SASL_MECHANISMS)}, "
                    f"got {self.sasl_mechanism!r}"
                )
            if not (self.sasl_username and self.sasl_password):
                raise ConfigError(
                    f"{PREFIX}KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                    f"{PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD(_FILE)"
                )

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> KafkaSettings:
        return cls(
            bootstrap_servers=env_str(env, "KAFKA_BOOTSTRAP", cls.bootstrap_servers),
            topic_prefix=env_str(env, "TOPIC_PREFIX", cls.topic_prefix),
            partitions=env_int(env, "KAFKA_PARTITIONS", cls.partitions, minimum=1),
            replication_factor=env_int(env, "KAFKA_REPLICATION", cls.replication_factor, minimum=1),
            client_id=env_str(env, "KAFKA_CLIENT_ID", cls.client_id),
            security_protocol=env_str(
                env, "KAFKA_SECURITY_PROTOCOL", cls.security_protocol
            ).upper(),
            sasl_mechanism=env_str(env, "KAFKA_SASL_MECHANISM", cls.sasl_mechanism).upper(),
            sasl_username=env_secret(env, "KAFKA_SASL_USERNAME").reveal(),
            sasl_password=env_secret(env, "KAFKA_SASL_PASSWORD"),
            ssl_cafile=env_str(env, "KAFKA_SSL_CAFILE", cls.ssl_cafile),
            ssl_certfile=env_str(env, "KAFKA_SSL_CERTFILE", cls.ssl_certfile),
            ssl_keyfile=env_str(env, "KAFKA_SSL_KEYFILE", cls.ssl_keyfile),
        )

    def topic(self, name: str) -> str:
        """The full topic name for a contract topic name."""
        return f"{self.topic_prefix}{name}"


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis (state, shared LLM limits, the LLM cache)."""

    url: Secret = field(default_factory=lambda: Secret("redis://127.0.0.1:6379/0"))
    # Prefix of every key recstream writes, so it can share a Redis safely.
    key_prefix: str = "rs"
    # Commands in flight per client (one Redis: its pool; a cluster: across its
    # nodes); more wait for a free connection (workers.resources.open_redis).
    max_connections: int = 64
    # Redis Cluster: the URL names any one node (the client discovers the
    # others and follows MOVED/ASK). Every script and multi-key command of
    # recstream touches one hash slot (docs/operations.md, "Redis Cluster").
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.cluster:
            db = urlsplit(self.url.reveal()).path.strip("/")
            if db not in {"", "0"}:
                raise ConfigError(
                    f"{PREFIX}REDIS_CLUSTER: a Redis Cluster has database 0 only; "
                    f"{PREFIX}REDIS_URL names database {db}"
                )

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> RedisSettings:
        return cls(
            url=_redis_url(env),
            key_prefix=env_str(env, "REDIS_KEY_PREFIX", cls.key_prefix),
            max_connections=env_int(env, "REDIS_MAX_CONNECTIONS", cls.max_connections, minimum=1),
            cluster=env_bool(env, "REDIS_CLUSTER", cls.cluster),
        )


def _redis_url(env: Mapping[str, str]) -> Secret:
    """REDIS_URL(_FILE) completed with the ACL user (REDIS_USERNAME, REDIS_PASSWORD(_FILE))
    and TLS (REDIS_TLS, REDIS_TLS_CA_FILE / _CERT_FILE / _KEY_FILE), so every client
    built from the URL (state, LLM limits, LLM cache) authenticates the same way."""
    url = env_secret(env, "REDIS_URL", "redis://127.0.0.1:6379/0").reveal()
    username = env_secret(env, "REDIS_USERNAME").reveal()
    password = env_secret(env, "REDIS_PASSWORD").reveal()
    tls_files = {
        "ssl_ca_certs": env_str(env, "REDIS_TLS_CA_FILE", ""),
        "ssl_certfile": env_str(env, "REDIS_TLS_CERT_FILE", ""),
        "ssl_keyfile": env_str(env, "REDIS_TLS_KEY_FILE", ""),
    }
    tls = env_bool(env, "REDIS_TLS", False) or any(tls_files.values())
    if not (username or password or tls):
        return Secret(url)
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ConfigError(f"{PREFIX}REDIS_URL must be redis:// or rediss:// to add credentials")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if username or password:
        netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{netloc}"
    elif "@" in parts.netloc:
        netloc = parts.netloc
    query = dict(parse_qsl(parts.query))
    query.update({k: v for k, v in tls_files.items() if v})
    scheme = "rediss" if tls else parts.scheme
    return Secret(urlunsplit((scheme, netloc, parts.path, urlencode(query), parts.fragment)))


def _kinds(env: Mapping[str, str], name: str, default: frozenset[str]) -> frozenset[str]:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    kinds = frozenset(k.strip() for k in raw.split(",") if k.strip())
    unknown = kinds - _KINDS
    if unknown:
        raise ConfigError(f"{PREFIX}{name}: unknown interaction kinds {sorted(unknown)}")
    return kinds


def _edge_roles(env: Mapping[str, str], default: frozenset[str]) -> frozenset[str]:
    raw = env.get(PREFIX + "BATCH_EDGE_ROLES")
    if raw is None:
        return default
    roles = frozenset(r.strip() for r in raw.split(",") if r.strip())
    # Only roles that never await an LLM: a batch edge processes one batch at a time.
    allowed = {r.name for r in ROLES.values() if not r.awaits_llm}
    if roles - allowed:
        raise ConfigError(
            f"{PREFIX}BATCH_EDGE_ROLES: {sorted(roles - allowed)} cannot run on the batch "
            f"edge; allowed: {sorted(allowed)}"
        )
    return roles


RANK_STYLES: Final = ("zero_shot", "few_shot", "chain_of_thought", "two_step")
_KINDS: Final = frozenset({"view", "click", "add_to_cart", "purchase", "rating", "skip"})


@dataclass(frozen=True)
class StreamSettings:
    """How the stream processors batch, trigger and pick candidates."""

    group_prefix: str = "recstream"
    # Micro-batches: up to 500 records or 20 ms, whichever comes first. 20 ms
    # bounds the latency a batch adds; 500 amortises Redis and ONNX calls.
    batch_max: int = 500
    batch_within_ms: int = 20
    candidates_max: int = 200
    # Users with fewer interactions than this are "cold": popular/fresh items
    # (and, from the LLM issue on, an LLM path) instead of the model.
    cold_threshold: int = 3
    # Interactions of these kinds trigger a recommendation, at most one per
    # user per debounce window (a burst of clicks yields one list, not ten).
    trigger_kinds: frozenset[str] = frozenset({"purchase", "add_to_cart", "rating"})
    debounce_ms: int = 30_000
    exclude_kinds: frozenset[str] = frozenset(_KINDS)
    # Rank reserved for the best new (text-only) item among a user's joint-space
    # neighbours when the model alone would not list it; 0 (the default) leaves
    # new items to compete on their own: the content-aware model gives them
    # their share of the top 10 (docs/model.md, mixed protocol).
    new_item_slot: int = 0
    catalog_poll_ms: int = 1000
    web_port: int = 6066
    # Address of /healthz, /readyz, /metrics: loopback on a laptop; 0.0.0.0 in a
    # pod, so the kubelet's probes and Prometheus reach it.
    web_bind: str = "127.0.0.1"
    # A consumer that has had records waiting this long without progress is stalled.
    stall_after_s: float = 60.0
    # Plausibility of input (workers.validation): timestamps before the floor
    # (default 1990-01-01, which admits MovieLens-100k's 1997-98 events and
    # refuses 0 and timestamps in seconds) and ratings off the scale are
    # dead-lettered. The default scale is MovieLens's 1-5.
    ts_floor_ms: int = 631_152_000_000
    max_future_skew_ms: int = 3_600_000
    rating_min: float = 1.0
    rating_max: float = 5.0
    # Static group membership (Kafka's group.instance.id): a worker restarted
    # with the same id (a pod's stable name) takes its partitions back at once
    # instead of waiting for a rebalance. Must be unique per process; empty = off.
    instance_id: str = ""
    # Roles consumed batch by batch straight from aiokafka (streams.edge) rather
    # than through faust's per-record stream: the high-volume, LLM-free role
    # whose per-record work is small. Empty = every role on faust.
    batch_edge_roles: frozenset[str] = frozenset({"interactions"})

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> StreamSettings:
        rating_min = env_float(env, "RATING_MIN", cls.rating_min)
        rating_max = env_float(env, "RATING_MAX", cls.rating_max)
        if rating_min > rating_max:
            raise ConfigError(f"{PREFIX}RATING_MIN must not exceed {PREFIX}RATING_MAX")
        return cls(
            ts_floor_ms=env_int(env, "TS_FLOOR_MS", cls.ts_floor_ms, minimum=0),
            max_future_skew_ms=env_int(
                env, "MAX_FUTURE_SKEW_MS", cls.max_future_skew_ms, minimum=0
            ),
            rating_min=rating_min,
            rating_max=rating_max,
            instance_id=env_str(env, "INSTANCE_ID", cls.instance_id),
            batch_edge_roles=_edge_roles(env, cls.batch_edge_roles),
            group_prefix=env_str(env, "GROUP_PREFIX", cls.group_prefix),
            batch_max=env_int(env, "BATCH_MAX", cls.batch_max, minimum=1),
            batch_within_ms=env_int(env, "BATCH_WITHIN_MS", cls.batch_within_ms, minimum=1),
            candidates_max=env_int(env, "CANDIDATES_MAX", cls.candidates_max, minimum=1),
            cold_threshold=env_int(env, "COLD_THRESHOLD", cls.cold_threshold, minimum=0),
            trigger_kinds=_kinds(env, "TRIGGER_KINDS", cls.trigger_kinds),
            debounce_ms=env_int(env, "DEBOUNCE_MS", cls.debounce_ms, minimum=0),
            exclude_kinds=_kinds(env, "EXCLUDE_KINDS", cls.exclude_kinds),
            new_item_slot=env_int(env, "NEW_ITEM_SLOT", cls.new_item_slot, minimum=0),
            catalog_poll_ms=env_int(env, "CATALOG_POLL_MS", cls.catalog_poll_ms, minimum=50),
            web_port=env_int(env, "WEB_PORT", cls.web_port, minimum=0),
            web_bind=env_str(env, "WEB_BIND", cls.web_bind),
            stall_after_s=env_float(env, "STALL_AFTER_S", cls.stall_after_s),
        )


@dataclass(frozen=True)
class ServingSettings:
    """How asks are routed (the policy) and answered (deadlines, LLM paths)."""

    # Every request is answered within this many ms of its arrival, by the
    # best rung ready by then: LLM -> cached LLM result -> model -> popular.
    request_deadline_ms: int = 2000
    # LLM paths, each of which can be turned off on its own.
    llm_cold_start: bool = True
    llm_chat: bool = True
    llm_explain: bool = True
    # A stated context shorter than this carries too little to rank on.
    min_query_chars: int = 8
    # policy.chat_complexity score from which a chat message goes to the LLM.
    chat_complex_at: float = 0.5
    # LLM calls in flight per LLM role process (bounded background work).
    llm_concurrency: int = 8
    # Per chat turn and explanation: seconds an LLM answer may take before
    # the rules/template rung answers. Well below Kafka's poll interval.
    chat_deadline_ms: int = 4000
    explain_deadline_ms: int = 3000
    # Explanations: how many items of a list get one, and how many of those
    # may be LLM-written (the rest use the grounded template).
    explain_max_items: int = 10
    explain_llm_items: int = 1
    # Lists of these routes may get LLM-written explanations: by default those an
    # LLM path produced (a cold user who stated what they want), where the user
    # is already on the LLM-grade path; model lists use the grounded template.
    explain_llm_routes: frozenset[str] = frozenset({"llm_cold"})
    # Share of the LLM token budget per minute each path may spend (0..1 of
    # RECSTREAM_LLM_BUDGET_TOKENS_PER_MINUTE; ignored when that is 0).
    budget_share_cold: float = 0.4
    budget_share_chat: float = 0.4
    budget_share_explain: float = 0.2
    # Dialogue state of a chat session lives this long after its last turn.
    chat_session_ttl_s: int = 1800
    # The seed's mechanisms, each off (or at its cheapest) by default; see
    # docs/seed-fidelity.md. Two-stage blend: final = w * model + (1 - w) * LLM
    # (the seed: 0.6); 0 keeps the LLM's order.
    llm_blend_model_weight: float = 0.0
    # RA-Rec: facts (catalog attributes linking candidates to the stated context)
    # in the ranking prompt, at most this many; 0 uses the plain ranking prompt.
    llm_rag_facts: int = 0
    # zero_shot, few_shot (examples chosen per call from the catalog),
    # chain_of_thought (one call) or two_step (an analysis call, then the ranking).
    llm_rank_style: str = "zero_shot"
    # XRec: LLM explanations generated per item, the best grounded one kept.
    explain_candidates: int = 1
    # Emitted outputs are kept this long so a redelivered cause re-emits
    # identical content (Kafka redelivery comes within minutes; a day also
    # covers an operator's same-day replay).
    output_ttl_s: int = 86_400

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> ServingSettings:
        shares = {
            name: env_float(
                env, f"BUDGET_SHARE_{name.upper()}", getattr(cls, f"budget_share_{name}")
            )
            for name in ("cold", "chat", "explain")
        }
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"{PREFIX}BUDGET_SHARE_{name.upper()} must be within 0..1")
        blend = env_float(env, "LLM_BLEND_MODEL_WEIGHT", cls.llm_blend_model_weight)
        if not 0.0 <= blend <= 1.0:
            raise ConfigError(f"{PREFIX}LLM_BLEND_MODEL_WEIGHT must be within 0..1")
        style = env_str(env, "LLM_RANK_STYLE", cls.llm_rank_style)
        if style not in RANK_STYLES:
            raise ConfigError(f"{PREFIX}LLM_RANK_STYLE must be one of {', '.join(RANK_STYLES)}")
        return cls(
            request_deadline_ms=env_int(
                env, "REQUEST_DEADLINE_MS", cls.request_deadline_ms, minimum=50
            ),
            llm_cold_start=env_bool(env, "LLM_COLD_START", cls.llm_cold_start),
            llm_chat=env_bool(env, "LLM_CHAT", cls.llm_chat),
            llm_explain=env_bool(env, "LLM_EXPLAIN", cls.llm_explain),
            min_query_chars=env_int(env, "MIN_QUERY_CHARS", cls.min_query_chars, minimum=0),
            chat_complex_at=env_float(env, "CHAT_COMPLEX_AT", cls.chat_complex_at),
            llm_concurrency=env_int(env, "LLM_ROLE_CONCURRENCY", cls.llm_concurrency, minimum=1),
            chat_deadline_ms=env_int(env, "CHAT_DEADLINE_MS", cls.chat_deadline_ms, minimum=50),
            explain_deadline_ms=env_int(
                env, "EXPLAIN_DEADLINE_MS", cls.explain_deadline_ms, minimum=50
            ),
            explain_max_items=env_int(env, "EXPLAIN_MAX_ITEMS", cls.explain_max_items, minimum=0),
            explain_llm_items=env_int(env, "EXPLAIN_LLM_ITEMS", cls.explain_llm_items, minimum=0),
            explain_llm_routes=frozenset(
                r.strip()
                for r in env_str(env, "EXPLAIN_LLM_ROUTES", ",".join(cls.explain_llm_routes)).split(
                    ","
                )
                if r.strip()
            ),
            budget_share_cold=shares["cold"],
            budget_share_chat=shares["chat"],
            budget_share_explain=shares["explain"],
            chat_session_ttl_s=env_int(
                env, "CHAT_SESSION_TTL_S", cls.chat_session_ttl_s, minimum=1
            ),
            llm_blend_model_weight=blend,
            llm_rag_facts=env_int(env, "LLM_RAG_FACTS", cls.llm_rag_facts, minimum=0),
            llm_rank_style=style,
            explain_candidates=env_int(
                env, "EXPLAIN_CANDIDATES", cls.explain_candidates, minimum=1
            ),
            output_ttl_s=env_int(env, "OUTPUT_TTL_S", cls.output_ttl_s, minimum=0),
        )


@dataclass(frozen=True)
class Settings:
    """The whole configuration; build it with :meth:`from_env`."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    model: ModelSettings = field(default_factory=lambda: _model_settings()())  # noqa: PLW0108 - lazy import
    llm: LLMSettings = field(default_factory=lambda: _llm_settings()())  # noqa: PLW0108 - lazy import
    # Local runtime folder: infra data, logs, model artifacts (dev default).
    home: Path = REPO_ROOT / ".local"
    log_level: str = "INFO"
    # "text" (faust's format) or "json" (one JSON object per line, for log shippers).
    log_format: str = "text"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: the process environment)."""
        source = os.environ if env is None else env
        return cls.from_mapping(source)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            kafka=KafkaSettings.from_mapping(env),
            redis=RedisSettings.from_mapping(env),
            stream=StreamSettings.from_mapping(env),
            serving=ServingSettings.from_mapping(env),
            model=_model_settings().from_mapping(env),
            llm=_llm_settings().from_mapping(env),
            home=Path(env_str(env, "HOME", str(REPO_ROOT / ".local"))),
            log_level=env_str(env, "LOG_LEVEL", "INFO").upper(),
            log_format=_log_format(env_str(env, "LOG_FORMAT", "text")),
        )


# Section modules import the env helpers above, so they are imported lazily here.
def _model_settings() -> type[ModelSettings]:
    from workers.model.settings import ModelSettings

    return ModelSettings


def _llm_settings() -> type[LLMSettings]:
    from workers.llm.settings import LLMSettings

    return LLMSettings


def _log_format(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in {"text", "json"}:
        raise ConfigError(f"{PREFIX}LOG_FORMAT must be text or json, got {value!r}")
    return lowered
