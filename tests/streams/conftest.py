"""Models for the stream tests, trained through the real commands.

- ``model_dir``: the tiny synthetic model (tests/models.py, trained once per
  session for every package);
  enough for delivery, state and dead-letter tests.
- ``ml100k_model_dir``: the real A-LLMRec model on MovieLens-100k (about five
  minutes on 2 cores), for the test whose claim depends on the model's
  quality: a new item reaching users whose history is close to it.

RECSTREAM_TEST_MODEL_DIR / RECSTREAM_TEST_ML100K_MODEL_DIR point at exported
model directories. The test command (scripts/test) trains the ML-100k model
before pytest starts (scripts/ensure-model, cached per version of the training
code), so no test's timeout ever includes training; without it, the fixture
trains here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.models import TinyModel
from workers.model.launch import training_command
from workers.settings import REPO_ROOT, Settings

__all__ = ["ml100k_model_dir", "model_dir"]


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> Path:
    given = os.environ.get("RECSTREAM_TEST_MODEL_DIR")
    if given:
        return Path(given)
    model: TinyModel = request.getfixturevalue("tiny_model")
    return model.model_dir


@pytest.fixture(scope="session")
def ml100k_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("RECSTREAM_TEST_ML100K_MODEL_DIR")
    if given:
        return Path(given)
    home = tmp_path_factory.mktemp("recstream-ml100k")
    # The data set is cached per machine; share the developer's cache if present.
    cache = REPO_ROOT / ".local" / "cache"
    if cache.is_dir():
        (home / "cache").symlink_to(cache)
    settings = Settings.from_mapping({"RECSTREAM_HOME": str(home)})
    for name, argv in (("train_cli", ["--version", "ml100k-test", "--no-eval"]), ("export", [])):
        args, env = training_command(name, argv, settings)
        proc = subprocess.run(
            args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200, check=False
        )
        assert proc.returncode == 0, (
            f"recstream {name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return home / "models" / "current"
