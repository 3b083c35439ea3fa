"""``recstream train``: the content-aware A-LLMRec model, SASRec, BPR-MF and
A-LLMRec stage 1 on MovieLens-100k.

The served model is :class:`~workers.training.models.SASRecPair`: the
content-aware :class:`~workers.training.models.ContentSASRec` (item vector =
ID embedding + projected text, IDs dropped at random in training, cold
items text-only) and the ID-only SASRec, scores averaged, with a per-item
prior column calibrated on the lists it serves (``fit_calibration``).
Without the SASRec (``--no-eval``, which skips the baselines, or
``serve_pair=false``) the content model is served alone. Stage 1 is trained
against the content model for the joint space. SASRec (also half of the
pair) and BPR-MF are the baselines. Every sequence model trains on windows
of ``max_len + 1`` items ending at n, n - max_len, ..., so every
interaction of the training part is a target; every learned model is
early-stopped on validation, then refit on the validation items
(``refit_epochs``); the sequence models keep the mean of their last
``refit_average`` refit weights.

Writes a run folder ``<home>/runs/<version>/`` with ``checkpoint.pt`` (all
weights, the text embeddings and the split's cold items), ``config.json``,
and, after evaluation, ``metrics.json``. ``recstream export`` turns a run into
a model directory for the workers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from workers.training.data import Dataset, load_dataset, synthetic_dataset
from workers.training.models import (
    BPRMF,
    ALLMRecStage1,
    ContentSASRec,
    SASRec,
    SASRecPair,
    ServedModel,
)

__all__ = ["TrainConfig", "Trained", "left_pad", "load_run", "save_run", "train_all", "windows"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a training run (saved with the run and in the manifest)."""

    seed: int = 42  # training seed: initialisation, batches, ID dropout
    split_seed: int = 42  # which items are cold (the data split); apart from ``seed``
    threads: int = 2
    cold_fraction: float = 0.15  # 0: the standard protocol (complete dataset)
    max_users: int = 0  # > 0: first users only (tests)
    synthetic: bool = False  # planted-sequence data instead of ML-100k (tests)
    # SASRec: softmax cross-entropy over the warm catalogue at every position.
    dim: int = 64
    max_len: int = 50
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    sas_lr: float = 1e-3
    sas_epochs: int = 200
    sas_batch: int = 32  # windows; small batches: ~65 updates an epoch, converges in ~40
    patience: int = 5  # evaluations (every eval_every epochs) without improvement
    eval_every: int = 2
    # Refit: after early stopping, every learned model (SASRec, BPR-MF, the
    # content model) trains on for this many epochs from its best weights on
    # the training part *plus each user's validation item*, the interaction
    # just before the test one, as a production model retrained on all the
    # data it has would. Validation has chosen the weights by then; it is not
    # used as a target before. 0: no refit (the ablation). 10 = the epochs
    # early stopping waits (patience x eval_every).
    refit_epochs: int = 10
    # The sequence models keep the mean of their weights after each of the
    # last ``refit_average`` refit epochs (stochastic weight averaging): one
    # set of weights moves test NDCG@10 by +-0.004 from epoch to epoch; the
    # mean of the second half of the refit sits near the top of that range.
    # 1: the last weights (the ablation).
    refit_average: int = 5
    # Serve the content model and the SASRec baseline as one model (scores
    # averaged, SASRecPair). Needs the baselines; without them (--no-eval)
    # or with False, the content model is served alone.
    serve_pair: bool = True
    # False: one window per user (the last max_len targets), the old recipe (ablation).
    all_windows: bool = True
    # The content model (ContentSASRec): SASRec's settings plus the share of
    # item IDs dropped per batch (0: text never has to stand in for an ID).
    id_dropout: float = 0.2
    use_text: bool = True  # False: ID-only (ablation: what the text adds)
    # BPR-MF is only compared against; SASRec is also the pair's ID half.
    # ``--no-eval`` skips both (the content model is then served alone).
    baselines: bool = True
    # BPR-MF baseline.
    bpr_dim: int = 64
    bpr_lr: float = 5e-3
    bpr_reg: float = 1e-5
    bpr_epochs: int = 150
    bpr_batch: int = 2048
    # A-LLMRec stage 1 (paper: joint 128, alpha = 0.5 item reconstruction).
    joint_dim: int = 128
    alpha: float = 0.5
    beta: float = 0.5
    s1_lr: float = 3e-3
    s1_epochs: int = 30
    s1_batch: int = 128
    # Calibration of text-only items (fit_calibration): the cold share of the
    # served top 10s must lie within this of the interaction share.
    cold_band: float = 0.035

    @classmethod
    def tiny(cls) -> TrainConfig:
        """Seconds-long settings for the test suite (synthetic data)."""
        return cls(
            synthetic=True,
            # One thread: tests often share the 2 cores with other processes, and
            # two processes spinning 2 OpenMP threads each ran ~20x slower.
            threads=1,
            dim=32,
            max_len=20,
            sas_batch=128,
            sas_epochs=60,
            eval_every=10,
            bpr_epochs=20,
            s1_epochs=60,
            patience=3,
            refit_epochs=3,
            refit_average=2,
        )


@dataclass
class Trained:
    config: TrainConfig
    data: Dataset
    text: torch.Tensor  # [n_items + 1, 384], row 0 zeros
    sasrec: SASRec | None  # baseline (None: trained without baselines)
    bpr: BPRMF | None  # baseline
    model: ServedModel  # the served model: the pair, or the content model alone
    stage1: ALLMRecStage1  # the joint space, trained against ``content``
    history: dict[str, Any]
    # How the served scores treat items: pop * log(1 + count) prior for warm
    # items; text-only items (cold, or added at run time) are scored
    # cold_scale * <u, v> + cold. Chosen without test data (fit_calibration).
    fusion: dict[str, float] = field(
        default_factory=lambda: {"pop": 0.0, "cold": 0.0, "cold_scale": 1.0}
    )

    @property
    def content(self) -> ContentSASRec:
        """The content-aware model (alone, or the pair's content half)."""
        return self.model.content if isinstance(self.model, SASRecPair) else self.model


def left_pad(seqs: list[list[int]] | list[Any], max_len: int) -> torch.Tensor:
    out = torch.zeros(len(seqs), max_len, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        tail = list(seq)[-max_len:]
        if tail:
            out[row, max_len - len(tail) :] = torch.as_tensor(tail, dtype=torch.int64)
    return out


def windows(seqs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [W, max_len]: windows of ``max_len + 1`` items ending at
    n, n - max_len, n - 2 max_len, ... of each sequence, so every item but the
    first is a target exactly once (left-padded; 0 = no target)."""
    ins: list[list[int]] = []
    tgts: list[list[int]] = []
    for seq in seqs:
        end = len(seq)
        while end >= 2:
            chunk = seq[max(0, end - max_len - 1) : end]
            ins.append(chunk[:-1])
            tgts.append(chunk[1:])
            end -= max_len
    return left_pad(ins, max_len), left_pad(tgts, max_len)


def _user_sequences(data: Dataset, *, with_valid: bool = False) -> list[list[int]]:
    """Each user's training part (``with_valid``: followed by their validation item)."""
    if not with_valid:
        return data.train_seqs
    return [[*s, int(v)] if v > 0 else s for s, v in zip(data.train_seqs, data.valid, strict=True)]


def _training_windows(
    cfg: TrainConfig, data: Dataset, *, with_valid: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows of the training part (``with_valid``: each user's
    sequence followed by their validation item, the refit's data)."""
    seqs = [s for s in _user_sequences(data, with_valid=with_valid) if len(s) >= 2]
    if cfg.all_windows:
        return windows(seqs, cfg.max_len)
    return left_pad([s[:-1] for s in seqs], cfg.max_len), left_pad(
        [s[1:] for s in seqs], cfg.max_len
    )


def _valid_ndcg(scores: torch.Tensor, data: Dataset, users: np.ndarray) -> float:
    """NDCG@10 of the validation item, history excluded, warm items only.
    Ties count against the target: a model that scores many items equal does
    not get the best of them."""
    scores = scores.clone()
    scores[:, ~torch.from_numpy(data.warm_mask)] = -torch.inf
    for row, u in enumerate(users):
        scores[row, data.train_seqs[u]] = -torch.inf
    target = torch.from_numpy(data.valid[users])
    tscore = scores.gather(1, target.unsqueeze(1))
    rank = ((scores > tscore).sum(1) + (scores == tscore).sum(1) - 1).float()
    return float(torch.where(rank < 10, 1.0 / torch.log2(rank + 2.0), 0.0).mean())


def _eval_users(data: Dataset) -> np.ndarray:
    return np.flatnonzero(data.valid > 0)


class EarlyStopping:
    """Keeps the weights of the best validation score; says stop after
    ``patience`` evaluations without improvement."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = -1.0
        self._bad = 0
        self._state: dict[str, torch.Tensor] | None = None

    def should_stop(self, score: float, model: torch.nn.Module) -> bool:
        if score > self.best:
            self.best, self._bad = score, 0
            self._state = {k: v.clone() for k, v in model.state_dict().items()}
            return False
        self._bad += 1
        return self._bad >= self.patience

    def restore_best(self, model: torch.nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)


def _sequence_epoch(
    cfg: TrainConfig,
    model: SASRec,
    opt: torch.optim.Optimizer,
    windows: tuple[torch.Tensor, torch.Tensor],
    cold: torch.Tensor,
    generators: tuple[torch.Generator, torch.Generator],
    id_dropout: float,
) -> float:
    """One epoch of softmax cross-entropy over the warm catalogue at every
    position of every window; returns the last batch's loss."""
    inputs, targets = windows
    order_gen, drop_gen = generators
    model.train()
    loss = torch.zeros(())
    perm = torch.randperm(len(inputs), generator=order_gen)
    for start in range(0, len(inputs), cfg.sas_batch):
        idx = perm[start : start + cfg.sas_batch]
        if isinstance(model, ContentSASRec):
            table = model.table(id_dropout, drop_gen)
        else:
            table = model.item_emb.weight
        tgt = targets[idx]
        real = tgt > 0
        # Logits at target positions only (windows are left-padded).
        logits = model.sequence(inputs[idx], table)[real] @ table.T
        # Cold items never appear in training: keep them out of the softmax
        # (SASRec's rows stay at initialisation; the content model learns
        # text-only items through the dropped IDs of warm ones instead).
        logits = logits.masked_fill(cold, -1e9)
        loss = F.cross_entropy(logits, tgt[real])
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
    model.eval()
    return float(loss.item())


def _train_sequence(
    cfg: TrainConfig,
    data: Dataset,
    model: SASRec,
    hist: dict[str, Any],
    name: str,
    *,
    id_dropout: float = 0.0,
) -> None:
    """Early stopping on validation NDCG@10 (warm items), then the refit
    (``cfg.refit_epochs`` on training + validation items, from the best
    weights), keeping the mean of the last ``cfg.refit_average`` epochs' weights."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.sas_lr, betas=(0.9, 0.98))
    windows = _training_windows(cfg, data)
    cold = torch.from_numpy(~data.warm_mask)
    users = _eval_users(data)
    val_hist = left_pad([data.train_seqs[u] for u in users], cfg.max_len)
    stopper = EarlyStopping(cfg.patience)
    generators = (
        torch.Generator().manual_seed(cfg.seed),
        torch.Generator().manual_seed(cfg.seed + 7),
    )
    bar = tqdm(range(1, cfg.sas_epochs + 1), desc=name, unit="ep")
    for epoch in bar:
        loss = _sequence_epoch(cfg, model, opt, windows, cold, generators, id_dropout)
        if epoch % cfg.eval_every == 0:
            with torch.no_grad():
                table = model.table() if isinstance(model, ContentSASRec) else model.item_emb.weight
                ndcg = _valid_ndcg(model.sequence(val_hist, table)[:, -1] @ table.T, data, users)
            bar.set_postfix(loss=f"{loss:.3f}", val_ndcg=f"{ndcg:.4f}")
            if stopper.should_stop(ndcg, model):
                break
    stopper.restore_best(model)
    model.eval()
    hist[name] = {"best_val_ndcg@10": stopper.best, "epochs": epoch, "windows": len(windows[0])}
    if cfg.refit_epochs > 0:
        # A fresh optimiser from the best weights; its own generators, so the
        # early-stopped part of the run is the same with or without a refit.
        opt = torch.optim.Adam(model.parameters(), lr=cfg.sas_lr, betas=(0.9, 0.98))
        refit = _training_windows(cfg, data, with_valid=True)
        generators = (
            torch.Generator().manual_seed(cfg.seed + 11),
            torch.Generator().manual_seed(cfg.seed + 17),
        )
        averaged = min(max(cfg.refit_average, 1), cfg.refit_epochs)
        params = dict(model.named_parameters())
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for epoch in tqdm(range(1, cfg.refit_epochs + 1), desc=f"{name} refit", unit="ep"):
            _sequence_epoch(cfg, model, opt, refit, cold, generators, id_dropout)
            if epoch > cfg.refit_epochs - averaged:
                with torch.no_grad():
                    for k, v in params.items():
                        total[k] += v
        with torch.no_grad():
            for k, v in params.items():
                v.copy_(total[k] / averaged)
        hist[name]["refit"] = {
            "epochs": cfg.refit_epochs,
            "averaged_epochs": averaged,
            "targets": int((refit[1] > 0).sum()),
        }


def _sasrec_args(cfg: TrainConfig) -> dict[str, Any]:
    return {"n_blocks": cfg.blocks, "n_heads": cfg.heads, "dropout": cfg.dropout}


def train_sasrec(cfg: TrainConfig, data: Dataset, hist: dict[str, Any]) -> SASRec:
    torch.manual_seed(cfg.seed)
    model = SASRec(data.n_items, cfg.dim, cfg.max_len, **_sasrec_args(cfg))
    _train_sequence(cfg, data, model, hist, "sasrec")
    return model


def _content_model(cfg: TrainConfig, data: Dataset, text: torch.Tensor) -> ContentSASRec:
    return ContentSASRec(
        data.n_items,
        text if cfg.use_text else torch.zeros_like(text),
        torch.from_numpy(data.warm_mask),
        cfg.dim,
        cfg.max_len,
        **_sasrec_args(cfg),
    )


def train_content(
    cfg: TrainConfig, data: Dataset, text: torch.Tensor, hist: dict[str, Any]
) -> ContentSASRec:
    """The content-aware model (served alone, or as the pair's content half): ContentSASRec
    with ``id_dropout`` of the IDs dropped per batch."""
    torch.manual_seed(cfg.seed + 1)
    model = _content_model(cfg, data, text)
    drop = cfg.id_dropout if cfg.use_text else 0.0
    _train_sequence(cfg, data, model, hist, "content", id_dropout=drop)
    return model


def _bpr_epoch(
    cfg: TrainConfig,
    model: BPRMF,
    opt: torch.optim.Optimizer,
    pairs: np.ndarray,
    warm: np.ndarray,
    rng: np.random.Generator,
) -> float:
    """One epoch of BPR over (user, item) ``pairs`` with uniform warm negatives."""
    loss = torch.zeros(())
    perm = rng.permutation(len(pairs))
    for start in range(0, len(pairs), cfg.bpr_batch):
        batch = torch.from_numpy(pairs[perm[start : start + cfg.bpr_batch]])
        neg = torch.from_numpy(rng.choice(warm, size=len(batch)))
        u, p = batch[:, 0], batch[:, 1]
        reg = (
            cfg.bpr_reg
            * (
                model.user_emb(u).pow(2).sum()
                + model.item_emb(p).pow(2).sum()
                + model.item_emb(neg).pow(2).sum()
            )
            / len(batch)
        )
        loss = model.loss(u, p, neg) + reg
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
    return float(loss.item())


def _bpr_pairs(data: Dataset, *, with_valid: bool = False) -> np.ndarray:
    seqs = _user_sequences(data, with_valid=with_valid)
    return np.array([(u, i) for u, s in enumerate(seqs) for i in s], dtype=np.int64)


def train_bpr(cfg: TrainConfig, data: Dataset, hist: dict[str, Any]) -> BPRMF:
    """Early stopping on validation NDCG@10, then the refit (as the sequence models)."""
    model = BPRMF(data.n_users, data.n_items, cfg.bpr_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.bpr_lr)
    pairs = _bpr_pairs(data)
    warm = np.flatnonzero(data.warm_mask)
    users = _eval_users(data)
    rng = np.random.default_rng(cfg.seed)
    stopper = EarlyStopping(cfg.patience)
    bar = tqdm(range(1, cfg.bpr_epochs + 1), desc="BPR-MF", unit="ep")
    for epoch in bar:
        loss = _bpr_epoch(cfg, model, opt, pairs, warm, rng)
        if epoch % cfg.eval_every == 0:
            with torch.no_grad():
                ndcg = _valid_ndcg(model.scores(torch.from_numpy(users)), data, users)
            bar.set_postfix(loss=f"{loss:.3f}", val_ndcg=f"{ndcg:.4f}")
            if stopper.should_stop(ndcg, model):
                break
    stopper.restore_best(model)
    hist["bpr"] = {"best_val_ndcg@10": stopper.best, "epochs": epoch}
    if cfg.refit_epochs > 0:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.bpr_lr)
        refit, rng = _bpr_pairs(data, with_valid=True), np.random.default_rng(cfg.seed + 11)
        for _ in range(cfg.refit_epochs):
            _bpr_epoch(cfg, model, opt, refit, warm, rng)
        hist["bpr"]["refit"] = {"epochs": cfg.refit_epochs, "targets": len(refit)}
    return model


def train_stage1(
    cfg: TrainConfig, data: Dataset, model: ContentSASRec, text: torch.Tensor, hist: dict[str, Any]
) -> ALLMRecStage1:
    """A-LLMRec stage 1 against the frozen content model (see ALLMRecStage1 for the loss).

    The "collaborative" item embedding is the content model's item vector; the
    user representation its sequence output. Early stopping on the text
    path's validation NDCG@10 over warm items: the path text-only inputs take.
    """
    stage1 = ALLMRecStage1(cfg.dim, text.shape[1], cfg.joint_dim)
    opt = torch.optim.Adam(stage1.parameters(), lr=cfg.s1_lr)
    inputs, targets = _training_windows(cfg, data)
    with torch.no_grad():
        states = model(inputs)  # frozen, eval mode
        table = model.table()
    keep = targets > 0
    states, targets = states[keep], targets[keep]
    warm = torch.from_numpy(np.flatnonzero(data.warm_mask))
    col = torch.full((data.n_items + 1,), -1, dtype=torch.int64)
    col[warm] = torch.arange(len(warm))
    targets = col[targets]
    item_emb = table[warm]
    text_w = text[warm]
    users = _eval_users(data)
    with torch.no_grad():
        val_u = model.user(left_pad([data.train_seqs[u] for u in users], cfg.max_len))
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    stopper = EarlyStopping(cfg.patience)
    bar = tqdm(range(1, cfg.s1_epochs + 1), desc="A-LLMRec stage 1", unit="ep")
    n = len(targets)
    step_size = max(1, cfg.s1_batch * cfg.max_len)
    epoch = 0
    for epoch in bar:
        stage1.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, step_size):
            idx = perm[start : start + step_size]
            z_item, z_text = stage1.encode_item(item_emb), stage1.encode_text(text_w)
            j_item, j_text = stage1.item_dec(z_item), stage1.item_dec(z_text)
            matching = F.mse_loss(z_item, z_text)
            item_rec = F.mse_loss(j_item, item_emb)
            text_rec = F.mse_loss(stage1.text_dec(z_text), text_w)
            u = states[idx]
            rec = F.cross_entropy(u @ j_item.T, targets[idx]) + F.cross_entropy(
                u @ j_text.T, targets[idx]
            )
            loss = matching + cfg.alpha * item_rec + cfg.beta * text_rec + rec
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
        if epoch % cfg.eval_every == 0:
            stage1.eval()
            with torch.no_grad():
                scored = torch.zeros(data.n_items + 1, cfg.dim)
                scored[warm] = stage1.joint_from_text(text_w)
                ndcg = _valid_ndcg(val_u @ scored.T, data, users)
            bar.set_postfix(
                match=f"{matching.item():.4f}", rec=f"{rec.item():.3f}", val_ndcg=f"{ndcg:.4f}"
            )
            if stopper.should_stop(ndcg, stage1):
                break
    stopper.restore_best(stage1)
    stage1.eval()
    hist["stage1"] = {"best_val_text_path_ndcg@10": stopper.best, "epochs": epoch}
    return stage1


COLD_GRID = tuple(round(x, 2) for x in np.arange(-1.0, 4.001, 0.05))
COLD_SCALES = (0.25, 0.35, 0.5, 0.75, 1.0)


@torch.no_grad()
def fit_calibration(
    cfg: TrainConfig, data: Dataset, model: ServedModel, *, hist: dict[str, Any]
) -> dict[str, float]:
    """How text-only items are scored against warm ones, without any test data.

    score(u, c) = <u, v_c> for a warm item and ``cold_scale`` * <u, v_c> +
    ``cold`` for a text-only item (cold, or added at run time). Every user
    with a validation item ranks all items not among their other
    interactions (the ``mixed`` protocol's exclusions) from the history the
    model serves *now*: their training part followed by the validation item
    (which the refit has trained on). For every (scale, offset) on a grid we
    measure two things on those top 10s, neither of which needs a target:

    - The share of text-only items. It is the constraint: it must lie within
      ``cfg.cold_band`` of the share of interactions on cold items (new items
      shown about as often as they are used). Measured on the lists one item
      earlier (the validation lists) it drifted by up to 2.5 points to test.
    - The expected NDCG@10 of the user's next warm item under the model's own
      distribution (softmax over warm items): sum over the top 10 of p(item)
      x 1 / log2(position + 1). Inside the band the point with the highest
      wins. Every text-only item placed in a top 10 pushes warm ones down;
      this charges it the probability mass it displaces, so the fit places
      new items where the warm scores are flat (lower positions, less sure
      users) rather than at the top of confident lists; a scale below 1
      compresses the text-only scores towards that. (The validation item's
      own NDCG cannot be the objective any more: the refit has trained on it.)

    With no point in the band (a model whose text path is useless), the
    point closest to the target share is taken. ``pop`` stays 0: a
    log-popularity prior for warm items helped validation but not test, and
    it is what kept cold items out before. ``one_offset`` (scale 1, the
    offset closest to the target share: the first rule) is recorded for the
    report's ablation row.
    """
    users = _eval_users(data)
    table = model.table()
    sequences = _user_sequences(data, with_valid=True)
    served = model.user(left_pad([sequences[x] for x in users], cfg.max_len)) @ table.T
    served[:, 0] = -torch.inf
    for row, x in enumerate(users):
        served[row, list(data.all_items_of_user[x])] = -torch.inf
    is_cold = torch.from_numpy(~data.warm_mask)
    is_cold[0] = False
    target = data.cold_interaction_share
    if not bool(is_cold.any()):
        return {"pop": 0.0, "cold": 0.0, "cold_scale": 1.0}
    warm_scores = served.masked_fill(is_cold, -torch.inf)
    next_warm = warm_scores.softmax(dim=1)
    discount = 1.0 / torch.log2(torch.arange(10, dtype=torch.float32) + 2.0)

    def expected_ndcg(top: torch.Tensor) -> float:
        return float((next_warm.gather(1, top) * discount).sum(1).mean())

    shares: dict[tuple[float, float], float] = {}
    expected: dict[tuple[float, float], float] = {}  # in the band only
    for point in ((a, c) for a in COLD_SCALES for c in COLD_GRID):
        scale, cold = point
        top = torch.where(is_cold, scale * served + cold, served).topk(10, dim=1).indices
        shares[point] = float(is_cold[top].float().mean())
        if abs(shares[point] - target) <= cfg.cold_band:
            expected[point] = expected_ndcg(top)
    one_offset = min(COLD_GRID, key=lambda c: (abs(shares[1.0, c] - target), abs(c)))
    if expected:
        scale, cold = max(expected, key=lambda p: (expected[p], -abs(shares[p] - target)))
    else:
        scale, cold = min(shares, key=lambda p: (abs(shares[p] - target), abs(p[1])))
    warm_only = expected_ndcg(warm_scores.topk(10, dim=1).indices)
    hist["calibration"] = {
        "pop": 0.0,
        "cold": cold,
        "cold_scale": scale,
        "target_cold_share": target,
        "band": cfg.cold_band,
        "served_cold_share@10": shares[scale, cold],
        "served_cold_share@10_uncalibrated": shares[1.0, 0.0],
        # Expected NDCG@10 of the next warm item: with the fitted pair, and
        # with text-only items left out of the lists (the ceiling).
        "expected_ndcg@10": expected.get((scale, cold), float("nan")),
        "expected_ndcg@10_warm_only": warm_only,
        "one_offset": one_offset,
        "served_cold_share@10_one_offset": shares[1.0, one_offset],
    }
    return {"pop": 0.0, "cold": float(cold), "cold_scale": float(scale)}


def text_table(cfg: TrainConfig, data: Dataset) -> torch.Tensor:
    from workers.training.text import encode_texts

    emb = encode_texts(data.item_text)
    return torch.cat([torch.zeros(1, emb.shape[1]), torch.from_numpy(emb)])


def load_split(cfg: TrainConfig, cache_dir: Path) -> Dataset:
    """The data split of ``cfg`` (seeded by ``split_seed``, never by ``seed``)."""
    if cfg.synthetic:
        return synthetic_dataset(seed=cfg.split_seed)
    return load_dataset(
        cache_dir,
        cold_fraction=cfg.cold_fraction,
        seed=cfg.split_seed,
        max_users=cfg.max_users,
    )


def _timed(hist: dict[str, Any], name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    hist.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
    return out


def train_all(cfg: TrainConfig, cache_dir: Path) -> Trained:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = load_split(cfg, cache_dir)
    hist: dict[str, Any] = {}
    text = _timed(hist, "text", text_table, cfg, data)
    sasrec = _timed(hist, "sasrec", train_sasrec, cfg, data, hist) if cfg.baselines else None
    content = _timed(hist, "content", train_content, cfg, data, text, hist)
    bpr = _timed(hist, "bpr", train_bpr, cfg, data, hist) if cfg.baselines else None
    stage1 = _timed(hist, "stage1", train_stage1, cfg, data, content, text, hist)
    model = served_model(cfg, content, sasrec)
    hist["served"] = type(model).__name__
    fusion = fit_calibration(cfg, data, model, hist=hist)
    return Trained(cfg, data, text, sasrec, bpr, model, stage1, hist, fusion)


def served_model(cfg: TrainConfig, content: ContentSASRec, sasrec: SASRec | None) -> ServedModel:
    """The pair when configured and the SASRec was trained; else the content model alone."""
    if cfg.serve_pair and sasrec is not None:
        return SASRecPair(content, sasrec).eval()
    return content


def save_run(trained: Trained, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, Any] = {
        "model": trained.content.state_dict(),
        "stage1": trained.stage1.state_dict(),
        "text": trained.text,
        "fusion": trained.fusion,
    }
    if trained.sasrec is not None:
        ckpt["sasrec"] = trained.sasrec.state_dict()
    if trained.bpr is not None:
        ckpt["bpr"] = trained.bpr.state_dict()
    torch.save(ckpt, run_dir / "checkpoint.pt")
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "config": asdict(trained.config),
                "data_hash": trained.data.data_hash,
                "history": trained.history,
            },
            indent=2,
        )
    )


def load_run(run_dir: Path, cache_dir: Path) -> Trained:
    meta = json.loads((run_dir / "config.json").read_text())
    cfg = TrainConfig(
        **{f.name: meta["config"][f.name] for f in fields(TrainConfig) if f.name in meta["config"]}
    )
    torch.set_num_threads(cfg.threads)
    if "split_seed" not in meta["config"]:  # runs before the split seed was separate
        cfg.split_seed = cfg.seed
    if "serve_pair" not in meta["config"]:  # runs before the pair served the content model
        cfg.serve_pair = False
    if "refit_average" not in meta["config"]:  # runs before the refit's weights were averaged
        cfg.refit_average = 1
    data = load_split(cfg, cache_dir)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    if "model" not in ckpt:
        raise ValueError(f"{run_dir} predates the content-aware model: train again")
    sasrec: SASRec | None = None
    if "sasrec" in ckpt:
        sasrec = SASRec(data.n_items, cfg.dim, cfg.max_len, **_sasrec_args(cfg))
        sasrec.load_state_dict(ckpt["sasrec"])
        sasrec.eval()
    bpr: BPRMF | None = None
    if "bpr" in ckpt:
        bpr = BPRMF(data.n_users, data.n_items, cfg.bpr_dim)
        bpr.load_state_dict(ckpt["bpr"])
    text = ckpt["text"]
    content = _content_model(cfg, data, text)
    content.load_state_dict(ckpt["model"])
    content.eval()
    model = served_model(cfg, content, sasrec)
    stage1 = ALLMRecStage1(cfg.dim, text.shape[1], cfg.joint_dim)
    stage1.load_state_dict(ckpt["stage1"])
    stage1.eval()
    fusion = {"cold_scale": 1.0, **ckpt["fusion"]}  # runs before the scale: 1
    return Trained(cfg, data, text, sasrec, bpr, model, stage1, meta.get("history", {}), fusion)
