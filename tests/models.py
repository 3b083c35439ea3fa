"""The tiny model, trained and exported once per session through the real code path.

Registered as a fixture by tests/conftest.py, so every test package shares one.

``recstream train --tiny`` + ``recstream export`` run in the training venv
(exactly the commands a developer runs, through :mod:`workers.model.launch`),
on the planted-sequence synthetic data (item i is followed by item i+1), in
a temporary RECSTREAM_HOME. Takes ~30 s on 2 cores.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from workers.model import ModelSettings
from workers.model.launch import training_command
from workers.settings import REPO_ROOT, Settings


@dataclass(frozen=True)
class TinyModel:
    home: Path
    model_dir: Path
    train_output: str
    export_output: str
    parity: dict[str, float]

    def settings(self, **overrides: object) -> ModelSettings:
        values: dict[str, object] = {
            "model_dir": self.model_dir,
            "intra_op_threads": 2,
            "device": "cpu",
        }
        values |= overrides
        return ModelSettings(**values)  # type: ignore[arg-type]

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.model_dir / "manifest.json").read_text())
        return data


def _run(name: str, argv: list[str], settings: Settings) -> str:
    args, env = training_command(name, argv, settings)
    proc = subprocess.run(
        args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"recstream {name} failed:\n{output[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    if not (REPO_ROOT / ".venv-train" / "bin" / "python").is_file():
        pytest.fail(".venv-train is missing: run scripts/bootstrap")
    home = tmp_path_factory.mktemp("recstream-home")
    settings = Settings.from_mapping({"RECSTREAM_HOME": str(home)})
    train_out = _run("train_cli", ["--tiny", "--version", "tiny"], settings)
    export_out = _run("export", ["--threads", "1"], settings)
    parity = {
        m[1]: float(m[2])
        for m in re.finditer(r"parity (\w+)\s+max \|onnxruntime - torch\| = (\S+)", export_out)
    }
    return TinyModel(home, home / "models" / "current", train_out, export_out, parity)
