"""Stream tests run real workers on the tiny model the model tests train.

Set RECSTREAM_TEST_MODEL_DIR to an exported model directory to skip the
training step while iterating locally; CI always trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.model.conftest import TinyModel, tiny_model

__all__ = ["model_dir", "tiny_model"]


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> Path:
    given = os.environ.get("RECSTREAM_TEST_MODEL_DIR")
    if given:
        return Path(given)
    model: TinyModel = request.getfixturevalue("tiny_model")
    return model.model_dir
