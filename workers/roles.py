"""The worker roles: one registry that the Kafka edge, the CLI and deploy/ read.

A role is one kind of stream processor: the contract topic it consumes, what
it emits, and whether it may wait on an LLM. Each role runs as its own Kafka
consumer group (``<group prefix>-<role>``), so roles scale apart: replicas of
one role share its topic's partitions. Roles that wait on an LLM never share
a partition loop with the roles that must not (interactions, requests).

This module is pure data (no I/O, no heavy imports), so operators' tooling
(``deploy/``) can import it to generate one Deployment per role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from contracts import topics

__all__ = ["ALL", "ROLES", "Role", "consumer_group", "resolve"]


@dataclass(frozen=True, slots=True)
class Role:
    """One stream processor kind."""

    name: str
    # The contract topic this role consumes (the deployment prefix is added later).
    consumes: str
    emits: tuple[str, ...]
    # True for roles whose handler awaits LLM calls (always with a deadline).
    awaits_llm: bool
    # Scaling hint for operators: what bounds one replica's throughput.
    bound_by: str
    description: str
    # Whether this role dead-letters its topic's invalid records. One role per
    # topic does (its owner); a second role on the same topic skips them, or
    # every refused record would be dead-lettered twice.
    dead_letters: bool = True


ROLES: Final[dict[str, Role]] = {
    r.name: r
    for r in (
        Role(
            "interactions",
            topics.INTERACTIONS,
            (topics.RECOMMENDATIONS,),
            awaits_llm=False,
            bound_by="cpu",
            description="apply user events to state; emit debounced triggered lists",
        ),
        Role(
            "catalog",
            topics.CATALOG,
            (),
            awaits_llm=False,
            bound_by="cpu",
            description="apply catalog changes; new items become scorable from text",
        ),
        Role(
            "requests",
            topics.REQUESTS,
            (topics.RECOMMENDATIONS, topics.LLM_WORK),
            awaits_llm=False,
            bound_by="cpu",
            description="answer recommendation requests; route LLM-worthy asks to 'llm'",
        ),
        Role(
            "llm",
            topics.LLM_WORK,
            (topics.RECOMMENDATIONS,),
            awaits_llm=True,
            bound_by="llm",
            description="LLM cold-start ranking and reranking, each within its deadline",
        ),
        Role(
            "chat",
            topics.CHAT,
            (topics.CHAT_REPLIES,),
            awaits_llm=True,
            bound_by="llm",
            description="conversational recommendation with per-session dialogue state",
        ),
        Role(
            "explain",
            topics.RECOMMENDATIONS,
            (topics.EXPLANATIONS,),
            awaits_llm=True,
            bound_by="llm",
            description="one grounded explanation per recommended item (LLM or template)",
        ),
        Role(
            "enrich",
            topics.CATALOG,
            (),
            awaits_llm=True,
            bound_by="llm",
            description="LLM feature extraction for thin catalog text, fed into item embeddings",
            dead_letters=False,  # the catalog role owns the catalog topic's dead letters
        ),
    )
}

# The pseudo-role that runs every role in one process (dev, demo, tests).
ALL: Final = "all"


def resolve(names: Iterable[str]) -> list[Role]:
    """The roles named (``all`` expands to every role), in registry order."""
    wanted = set(names)
    unknown = wanted - set(ROLES) - {ALL}
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; known: {[*ROLES, ALL]}")
    if ALL in wanted:
        return list(ROLES.values())
    return [r for r in ROLES.values() if r.name in wanted]


def consumer_group(prefix: str, roles: Iterable[Role]) -> str:
    """The consumer group of a process running ``roles``.

    One role: ``<prefix>-<role>``, so replicas of a role share partitions. A
    process running several roles on faust is one Kafka member, so it needs one
    group of its own: the sorted names joined with '+' (``all`` for every role).
    A role on the batch edge (streams.edge) always takes its one-role group.
    """
    names = sorted(r.name for r in roles)
    if not names:
        raise ValueError("no roles")
    if set(names) == set(ROLES):
        return f"{prefix}-{ALL}"
    return f"{prefix}-{'+'.join(names)}"
