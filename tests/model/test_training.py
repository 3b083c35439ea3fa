"""Training, evaluation report and export of the tiny model (training venv, real code)."""

from __future__ import annotations

import json

import pytest

from tests.models import TinyModel

pytestmark = [pytest.mark.train, pytest.mark.slow]


def test_export_parity_is_within_tolerance(tiny_model: TinyModel) -> None:
    assert set(tiny_model.parity) == {"scorer", "user_encoder", "text_to_joint", "text_encoder"}
    for graph, diff in tiny_model.parity.items():
        print(f"parity {graph}: max abs diff {diff:.2e}")
        assert diff <= 1e-4, graph


def test_model_directory_is_versioned_with_manifest(tiny_model: TinyModel) -> None:
    assert tiny_model.model_dir.is_symlink()
    assert tiny_model.model_dir.resolve().name == "tiny"
    manifest = tiny_model.manifest
    for key in ("version", "created", "data_hash", "training_config", "metrics", "files"):
        assert key in manifest, key
    assert manifest["version"] == "tiny"
    for name in manifest["files"].values():
        assert (tiny_model.model_dir / name).is_file(), name


def test_evaluation_prints_protocol_with_every_table(tiny_model: TinyModel) -> None:
    out = tiny_model.train_output
    for proto in ("[full]", "[sampled]", "[cold_full]", "[cold_catalog]", "[cold_sampled]"):
        assert proto in out
    assert "chronological leave-one-out" in out
    assert "19 negatives" in out
    report = json.loads((tiny_model.home / "runs" / "tiny" / "metrics.json").read_text())
    full = report["results"]["full"]
    assert {"Popularity", "BPR-MF", "SASRec", "A-LLMRec"} <= set(full)
    assert {"HR@10", "NDCG@10", "MRR@10", "coverage@10", "pop_pct@10"} <= set(full["SASRec"])
    assert "Hit@1" in report["results"]["sampled"]["A-LLMRec"]
    # The planted structure is learnable: sequence models beat popularity by far.
    assert full["SASRec"]["NDCG@10"] > 3 * full["Popularity"]["NDCG@10"]
    assert full["A-LLMRec"]["NDCG@10"] > 3 * full["Popularity"]["NDCG@10"]
