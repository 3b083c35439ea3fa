"""The training launcher's environment: offline hubs, the repository on the path,
and OpenMP threads that wait passively (a busy CI core must not stall training)."""

from __future__ import annotations

import pytest

from workers.model.launch import training_command
from workers.settings import REPO_ROOT, Settings


def test_training_runs_offline_with_passive_openmp_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    args, env = training_command("train_cli", ["--no-eval"], Settings.from_env())
    assert args[1:4] == ["-m", "workers.training.train_cli", "--home"]
    assert args[-1] == "--no-eval"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_an_operators_openmp_wait_policy_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    _, env = training_command("export", [], Settings.from_env())
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
