"""Stream tests run real workers on the tiny model the model tests train."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.conftest import TinyModel, tiny_model

__all__ = ["model_dir", "tiny_model"]


@pytest.fixture(scope="session")
def model_dir(tiny_model: TinyModel) -> Path:
    return tiny_model.model_dir
