"""Test doubles at the network edge, kept as small documented product code.

Nothing in the runtime path imports this package. ``llm_server`` is the
scripted OpenAI-compatible LLM **test server** (slow, 429, 5xx, broken JSON,
hostile text): it is not a model, and its output is never presented as one.
"""
