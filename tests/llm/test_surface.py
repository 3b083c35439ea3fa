"""The LLM package's public surface stays narrow and honest (as httpx's test_exported_members)."""

from __future__ import annotations

import types

import workers.llm


def test_all_lists_exactly_the_public_names() -> None:
    exported = set(workers.llm.__all__)
    public = {
        name
        for name, value in vars(workers.llm).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == exported, f"not in __all__: {public - exported}; missing: {exported - public}"
    assert all(getattr(workers.llm, name) is not None for name in exported)


def test_the_surface_is_about_ten_names() -> None:
    assert len(workers.llm.__all__) <= 12
    assert sorted(workers.llm.__all__) == sorted(set(workers.llm.__all__))
