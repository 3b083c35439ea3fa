"""Training, evaluation report and export of the tiny model (training venv, real code)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.models import TinyModel
from workers.settings import REPO_ROOT

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
    for proto in ("[full]", "[sampled]", "[mixed]", "[cold_full]", "[cold_catalog]"):
        assert proto in out
    assert "[cold_sampled]" in out
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
    # Cold items compete in one ranking: the served model finds the cold target
    # among all items, where SASRec (no text) cannot.
    cold = report["results"]["cold_sampled"]
    assert cold["A-LLMRec"]["Hit@1"] > max(0.3, 3 * cold["SASRec"]["Hit@1"])
    assert 0.0 < report["results"]["mixed"]["A-LLMRec"]["cold@10"] < 0.6
    assert report["split"]["split_seed"] == 42
    assert report["split"]["cold_interaction_share"] > 0.0
    # Text-only items are scored cold_scale * <u, v> + cold, fitted after
    # training without test data; the exported model carries exactly the fitted pair, and the
    # report has the previous rule (one offset, scale 1) as an ablation row.
    cal = report["training"]["calibration"]
    assert cal["cold_scale"] in (0.25, 0.35, 0.5, 0.75, 1.0)
    fusion = tiny_model.manifest["fusion"]
    assert (fusion["cold"], fusion["cold_scale"]) == (cal["cold"], cal["cold_scale"])
    assert "A-LLMRec one offset" in report["results"]["mixed"]
    # Every learned model was refit on the validation items after early stopping.
    for name in ("sasrec", "content", "bpr"):
        assert report["training"][name]["refit"]["epochs"] == 3, name
    # The sequence models keep the mean of their last refit weights.
    for name in ("sasrec", "content"):
        assert report["training"][name]["refit"]["averaged_epochs"] == 2, name
    # The full recipe serves the content model and the SASRec as one model;
    # the report shows the content half alone, and neighbour searches use
    # the content half's columns only.
    assert report["training"]["served"] == "SASRecPair"
    assert "A-LLMRec content alone" in report["results"]["full"]
    shapes = tiny_model.manifest["shapes"]
    assert shapes["similarity_dim"] == tiny_model.manifest["training_config"]["dim"]
    assert shapes["dim"] == 2 * shapes["similarity_dim"]  # both halves are dim wide


_WINDOWS_CHECK = """
import torch
from workers.training.train import windows
seq = list(range(1, 121))  # 120 items, max_len 50: windows end at 120, 70, 20
inputs, targets = windows([seq], 50)
assert inputs.shape == targets.shape == (3, 50), inputs.shape
assert sorted(int(t) for t in targets[targets > 0]) == seq[1:]  # each a target once
assert torch.equal(inputs[0, 1:], targets[0, :-1])  # targets are the next items
print("ok")
"""


_REFIT_CHECK = """
from workers.training.data import synthetic_dataset
from workers.training.train import TrainConfig, _bpr_pairs, _training_windows, _user_sequences
data = synthetic_dataset(seed=42)
cfg = TrainConfig.tiny()
_, early = _training_windows(cfg, data)
_, refit = _training_windows(cfg, data, with_valid=True)
n_valid = int((data.valid > 0).sum())
assert n_valid > 0
# The refit adds exactly one target per user, the validation item ...
assert int((refit > 0).sum()) == int((early > 0).sum()) + n_valid
assert len(_bpr_pairs(data, with_valid=True)) == len(_bpr_pairs(data)) + n_valid
for u, seq in enumerate(_user_sequences(data, with_valid=True)):
    if data.valid[u] > 0:
        assert seq[:-1] == data.train_seqs[u] and seq[-1] == data.valid[u]
    # ... and never the test item.
    assert data.test[u] not in seq[len(data.train_seqs[u]):]
print("ok")
"""


_PAIR_CHECK = """
import torch
from workers.training.data import synthetic_dataset
from workers.training.models import SASRec, SASRecPair
from workers.training.train import TrainConfig, _content_model, left_pad
torch.manual_seed(0)
data = synthetic_dataset(seed=42)
cfg = TrainConfig.tiny()
text = torch.randn(data.n_items + 1, 384)
content = _content_model(cfg, data, text).eval()
sasrec = SASRec(data.n_items, 16, cfg.max_len).eval()  # halves may differ in width
pair = SASRecPair(content, sasrec).eval()
hist = left_pad([[1, 2, 3], [5, 9, 4, 7, 8]], cfg.max_len)
with torch.no_grad():
    table = pair.table()
    got = pair.user(hist) @ table.T
    want = 0.5 * (content.user(hist) @ content.table().T) + 0.5 * (
        sasrec.user(hist) @ sasrec.item_emb.weight.T
    ) * torch.from_numpy(data.warm_mask).float()
    assert table.shape == (data.n_items + 1, cfg.dim + 16), table.shape
    # One dot product over the concatenated halves = the mean of the two scores ...
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # ... and an item without a trained ID (cold, or added from text) is its
    # text alone: a zero ID half, the content half's text vector.
    cold = int(data.cold_items[0])
    assert torch.equal(table[cold, cfg.dim:], torch.zeros(16))
    assert torch.allclose(pair.text_vectors(text[cold : cold + 1])[0], table[cold], atol=1e-5)
    assert pair.similarity_dim == cfg.dim
    # A text-only item inside a history: the ID half reads a zero vector there
    # (the SASRec's masked table), the content half the item's text vector.
    with_cold = left_pad([[1, cold, 3]], cfg.max_len)
    masked = sasrec.item_emb.weight * torch.from_numpy(data.warm_mask).float().unsqueeze(1)
    got = pair.user(with_cold)
    want = torch.cat(
        [0.5 * content.user(with_cold), 0.5 * sasrec.sequence(with_cold, masked)[:, -1]], dim=1
    )
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(got[:, cfg.dim:], 0.5 * sasrec.user(with_cold), atol=1e-3)
    # Serving computes the last position only (the exported user encoder):
    # the same vector as the full sequence's last position, for every model,
    # with short, full-length and empty histories.
    mixed = left_pad([[], [2], list(range(1, 40)), [1, cold, 3]], cfg.max_len)
    cases = ((sasrec, sasrec.item_emb.weight), (content, content.table()), (pair, table))
    for model, items in cases:
        full = model.sequence(mixed, items)[:, -1]
        assert torch.allclose(model.last_state(mixed, items), full, atol=1e-5), type(model)
print("ok")
"""


_AVERAGE_CHECK = """
import torch
from workers.training import train as T
from workers.training.data import synthetic_dataset
from workers.training.models import SASRec
data = synthetic_dataset(seed=42)
cfg = T.TrainConfig.tiny()  # 3 refit epochs, the last 2 averaged
calls = []
def epoch(cfg, model, *args):  # every epoch sets every weight to its call number
    calls.append(float(len(calls) + 1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(calls[-1])
    return 0.0
T._sequence_epoch = epoch
model = SASRec(data.n_items, cfg.dim, cfg.max_len)
hist = {}
T._train_sequence(cfg, data, model, hist, "sasrec")
assert hist["sasrec"]["refit"]["averaged_epochs"] == 2
want = sum(calls[-2:]) / 2  # the mean of the last two refit epochs' weights
for name, p in model.named_parameters():
    assert torch.all(p == want), (name, p.flatten()[:3], want, calls)
print("ok")
"""


def _check(script: str) -> None:
    python = REPO_ROOT / ".venv-train" / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-c", script],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_training_windows_make_every_interaction_a_target() -> None:
    _check(_WINDOWS_CHECK)


def test_refit_adds_the_validation_items_and_never_the_test_items() -> None:
    _check(_REFIT_CHECK)


def test_the_pair_scores_the_mean_of_its_halves_and_text_only_items_by_text() -> None:
    _check(_PAIR_CHECK)


def test_the_refit_keeps_the_mean_of_its_last_epochs_weights() -> None:
    _check(_AVERAGE_CHECK)
