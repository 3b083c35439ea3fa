"""The Scorer on the exported tiny model: ranking, batching, new items, lifecycle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.models import TinyModel
from workers.errors import ConfigError, ModelError, ResourceClosedError
from workers.model import ModelSettings, Scorer, load_manifest
from workers.model.runtime import choose_providers
from workers.scoring import ModelScorer

pytestmark = [pytest.mark.train, pytest.mark.slow]


def _warm_runs(tiny: TinyModel, length: int) -> list[list[str]]:
    """Histories of consecutive warm items whose successor is warm too."""
    cold = set(tiny.manifest["cold_items"])
    n = int(tiny.manifest["shapes"]["items"]) - 1
    runs = []
    for start in range(1, n - length):
        ids = [str(i) for i in range(start, start + length + 1)]
        if not cold & set(ids):
            runs.append(ids)
    return runs


async def test_planted_positive_ranks_first(tiny_model: TinyModel) -> None:
    runs = _warm_runs(tiny_model, 6)[:32]
    assert len(runs) >= 8
    rng = np.random.default_rng(0)
    async with Scorer(tiny_model.settings()) as scorer:
        assert scorer.provider == "CPUExecutionProvider"
        hist = scorer.histories([r[:-1] for r in runs])
        cands = []
        for r in runs:
            others = [
                str(i) for i in rng.permutation(np.arange(1, scorer.n_items + 1)) if str(i) not in r
            ][:19]
            cands.append([r[-1], *others])  # the planted next item is column 0
        scores = await scorer.score(hist, scorer.rows(cands))
    assert scores.shape == (len(runs), 20)
    first = (scores.argmax(axis=1) == 0).mean()
    print(f"planted positive ranked first for {first:.0%} of {len(runs)} users")
    assert first >= 0.9


async def test_batch_api_matches_single_calls_and_pads(tiny_model: TinyModel) -> None:
    runs = _warm_runs(tiny_model, 4)[:5]
    async with Scorer(tiny_model.settings()) as scorer:
        hist = scorer.histories([r[:-1] for r in runs])
        cands = scorer.rows([[r[-1], "1", "2"] for r in runs])
        batch = await scorer.score(hist, cands)
        singles = await asyncio.gather(
            *(scorer.score(hist[i : i + 1], cands[i : i + 1]) for i in range(len(runs)))
        )
        short = await scorer.score(hist[:, -4:], cands)  # padded to max_len inside
        users = await scorer.user_vectors(hist)
        empty = await scorer.score(hist[:0], cands[:0])
    np.testing.assert_allclose(np.concatenate(singles), batch, atol=1e-5)
    np.testing.assert_allclose(short, batch, atol=1e-5)
    assert users.shape[0] == len(runs)
    assert empty.shape == (0, 3)


async def test_scoring_does_not_block_the_event_loop(tiny_model: TinyModel) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with Scorer(tiny_model.settings()) as scorer:
        rng = np.random.default_rng(1)
        hist = rng.integers(1, scorer.n_items, (256, scorer.max_len))
        cands = rng.integers(1, scorer.n_items, (256, 500))
        task = asyncio.create_task(ticker())
        for _ in range(5):
            await scorer.score(hist, cands)
        task.cancel()
    assert ticks > 5


async def test_new_items_are_scoreable_from_text(tiny_model: TinyModel) -> None:
    async with Scorer(tiny_model.settings()) as scorer:
        before = scorer.n_items
        rows = await scorer.add_items(
            ["new-a", "new-b", "1"], ["Movie 7 (1957). Genres: Action.", "A new film.", "x"]
        )
        assert scorer.n_items == before + 2
        assert rows[0] == before + 1 and rows[1] == before + 2
        assert rows[2] == scorer.row("1")  # known items keep their trained row
        assert scorer.raw_id(int(rows[0])) == "new-a"
        hist = scorer.histories([["3", "4", "new-a"]])  # a new item inside a history
        scores = await scorer.score(hist, np.asarray([[rows[0], rows[1], 5]]))
        assert np.isfinite(scores).all()
        many = await scorer.add_items([f"bulk-{i}" for i in range(300)], ["text"] * 300)
        assert scorer.n_items == before + 302 and many[-1] == before + 302
        emb = await scorer.encode_texts(["hello", "world"])
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


async def test_neighbours_survive_an_item_added_while_they_are_computed(
    tiny_model: TinyModel,
) -> None:
    """The catalog role adds items on the scorer's thread while the requests role
    computes joint-space neighbours on the loop: an item whose row appeared after the
    vectors were taken must not break the call (it did: IndexError, and the whole
    requests batch was dead-lettered in a CI run)."""
    async with ModelScorer(tiny_model.settings()) as model:
        inner = model._scorer
        taken = model._unit_vectors

        def vectors_then_an_item_arrives() -> np.ndarray:
            unit = taken()
            inner._add(["late"], ["A film added while the neighbours were computed."])
            return unit

        model._unit_vectors = vectors_then_an_item_arrives  # type: ignore[method-assign]
        found = model.similar_many([["1", "2"], ["late"]], 10, [{"late", "3"}, set()])
        assert len(found[0]) == 10 and not {"1", "2", "3", "late"} & set(found[0])
        assert found[1] == []  # its only seed is not in the vectors taken
        model._unit_vectors = taken  # type: ignore[method-assign]
        again = model.similar_many([["late"]], 10, [set()])
        assert len(again[0]) == 10 and "late" not in again[0]


async def test_item_added_at_run_time_scores_like_a_cold_item(tiny_model: TinyModel) -> None:
    """A run-time item is scored by the same model as the exported cold items:
    the same text gives the same row (MiniLM in ONNX vs torch, ~1e-5 apart)."""
    from workers.training.data import synthetic_dataset

    data = synthetic_dataset(seed=42)
    cold = [int(i) for i in data.cold_items[:5]]
    texts = [data.item_text[i - 1] for i in cold]
    async with Scorer(tiny_model.settings()) as scorer:
        trained_rows = [scorer.row(str(i)) for i in cold]
        rows = await scorer.add_items([f"copy-{i}" for i in cold], texts)
        vectors = scorer.item_vectors()
        np.testing.assert_allclose(vectors[rows], vectors[trained_rows], atol=1e-3)
        # Neighbour searches compare the columns that carry text only (the
        # pair's content half), and a free text lands where its item does.
        assert vectors.shape[1] == tiny_model.manifest["shapes"]["similarity_dim"]
        np.testing.assert_allclose(await scorer.joint_from_texts(texts), vectors[rows], atol=1e-5)
        hist = scorer.histories([["3", "4", "5"]] * len(cold))
        cands = np.stack([np.asarray(trained_rows), rows], axis=1)
        scores = await scorer.score(hist, cands)
    np.testing.assert_allclose(scores[:, 0], scores[:, 1], atol=1e-3)


async def test_lifecycle_close_twice_safe_reopen_refused(tiny_model: TinyModel) -> None:
    scorer = Scorer(tiny_model.settings())
    with pytest.raises(ResourceClosedError):
        _ = scorer.version
    async with scorer:
        assert scorer.version == "tiny"
        with pytest.raises(ResourceClosedError):
            await scorer.open()
    await scorer.aclose()
    await scorer.aclose()
    with pytest.raises(ResourceClosedError):
        await scorer.score(np.zeros((1, 4), np.int64), np.ones((1, 1), np.int64))
    with pytest.raises(ResourceClosedError):
        async with scorer:
            pass


async def test_bad_inputs_are_refused(tiny_model: TinyModel) -> None:
    async with Scorer(tiny_model.settings()) as scorer:
        with pytest.raises(ValueError, match="out of range"):
            await scorer.score(np.ones((1, 3), np.int64), np.asarray([[10**6]]))
        with pytest.raises(ValueError, match=r"\[B, C\]"):
            await scorer.score(np.ones((2, 3), np.int64), np.ones((3, 1), np.int64))


async def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model"):
        load_manifest(tmp_path)
    with pytest.raises(ModelError):
        async with Scorer(ModelSettings(model_dir=tmp_path, device="cpu")):
            pass


def test_manifest_similarity_columns_are_checked(tiny_model: TinyModel, tmp_path: Path) -> None:
    """A manifest without ``similarity_dim`` (before the pair) compares every
    column; one outside 1..dim is refused."""
    import json

    raw = tiny_model.manifest
    raw["files"] = {k: str(tiny_model.model_dir.resolve() / v) for k, v in raw["files"].items()}
    dim = raw["shapes"]["dim"]
    for value, expected in ((None, dim), (0, None), (dim + 1, None), (dim // 2, dim // 2)):
        shapes = {k: v for k, v in raw["shapes"].items() if k != "similarity_dim"}
        if value is not None:
            shapes["similarity_dim"] = value
        (tmp_path / "manifest.json").write_text(json.dumps(raw | {"shapes": shapes}))
        if expected is None:
            with pytest.raises(ModelError, match="similarity_dim"):
                load_manifest(tmp_path)
        else:
            assert load_manifest(tmp_path).similarity_dim == expected


def test_provider_choice_and_settings() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    env = {
        "RECSTREAM_MODEL_DIR": "/m",
        "RECSTREAM_ORT_THREADS": "2",
        "RECSTREAM_MODEL_DEVICE": "CPU",
        "RECSTREAM_TRAIN_PYTHON": "/py",
    }
    s = ModelSettings.from_mapping(env)
    assert (s.model_dir, s.intra_op_threads, s.device, s.train_python) == (
        Path("/m"),
        2,
        "cpu",
        Path("/py"),
    )
    with pytest.raises(ConfigError):
        ModelSettings.from_mapping({"RECSTREAM_MODEL_DEVICE": "tpu"})
