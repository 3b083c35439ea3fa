"""Tests of ``recstream llm-local`` (streams/llm_local.py)."""
