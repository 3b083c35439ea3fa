"""Catalog records as the LLM library's items, and the shared "LLM call with fallback" guard.

Used by every role that calls an LLM (llm, chat, explain, enrich): the same
prompt view of an item everywhere, and one place that turns any LLM failure
into a reason string for the output event, so an LLM problem never reaches
the partition loop as an exception (LLM errors are retriable by type, and a
retried batch would wait on the LLM again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from workers.catalog import CatalogView, ItemRecord
from workers.llm import Item, LLMError
from workers.llm.errors import BudgetExceeded

__all__ = ["budgeted", "guarded", "items_of", "llm_item"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Attributes worth a prompt's tokens; the rest (ids, urls, dates) is noise.
_PROMPT_ATTRIBUTES = ("genres", "year", "themes", "mood", "audience", "keywords")


def llm_item(record: ItemRecord) -> Item:
    attributes: dict[str, str] = {}
    for name in _PROMPT_ATTRIBUTES:
        value = record.attributes.get(name)
        if isinstance(value, list | tuple):
            attributes[name] = ", ".join(str(v) for v in value[:8])
        elif value not in (None, ""):
            attributes[name] = str(value)
    return Item(record.item_id, record.title or record.item_id, "", attributes)


def items_of(catalog: CatalogView, item_ids: Iterable[str]) -> list[Item]:
    """Prompt items for the ids the catalog knows (unknown or deleted ids are skipped)."""
    out = []
    for item_id in item_ids:
        record = catalog.items.get(item_id)
        if record is not None and not record.deleted:
            out.append(llm_item(record))
    return out


async def guarded(call: Awaitable[T], what: str) -> tuple[T | None, str | None]:
    """``(result, None)`` or ``(None, reason)``: never raises for an LLM failure.

    A bug (any other exception) is logged with its traceback and also falls
    back: an output must still be emitted for the cause.
    """
    try:
        return await call, None
    except LLMError as exc:
        reason = getattr(exc, "reason", type(exc).__name__)
        logger.info("%s: LLM unavailable (%s), falling back", what, reason)
        return None, f"LLM {reason}"
    except Exception:
        logger.exception("%s: unexpected error in the LLM path, falling back", what)
        return None, "LLM path error"


async def budgeted(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    budget: Any,
    slots: asyncio.Semaphore,
    estimate: int,
    path: str,
) -> tuple[T | None, str | None]:
    """One LLM call of a path: its budget share reserved first (``estimate`` tokens,
    settled to the real usage after), at most ``slots`` in flight, any failure turned
    into a reason (:func:`guarded`). ``call`` makes the coroutine only when it runs."""
    reservation = None
    if budget is not None:
        try:
            reservation = await budget.reserve(estimate, 0.0)
        except BudgetExceeded:
            return None, f"{path} budget share spent"
    async with slots:
        result, why = await guarded(call(), what)
    if reservation is not None:
        usage = getattr(result, "usage", None)
        await budget.settle(reservation, usage.total_tokens if usage is not None else 0, 0.0)
    return result, why
