"""``recstream train``: runs :mod:`workers.training.train_cli` in the training venv."""

from __future__ import annotations

from workers.model.launch import run_training_module

__all__ = ["main"]


def main(argv: list[str]) -> int:
    return run_training_module("train_cli", argv)
