"""``recstream train``: SASRec, BPR-MF and A-LLMRec stage 1 on MovieLens-100k.

Writes a run folder ``<home>/runs/<version>/`` with ``checkpoint.pt`` (all
weights, the text embeddings and the split's cold items), ``config.json``,
and, after evaluation, ``metrics.json``. ``recstream export`` turns a run into
a model directory for the workers.
"""

from __future__ import annotations

import argparse
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

from workers.training import DEFAULT_HOME
from workers.training.data import Dataset, load_dataset, synthetic_dataset
from workers.training.models import BPRMF, ALLMRecStage1, SASRec

__all__ = ["TrainConfig", "Trained", "left_pad", "main", "train_all"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a training run (saved with the run and in the manifest)."""

    seed: int = 42
    threads: int = 2
    cold_fraction: float = 0.15
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
    sas_batch: int = 128
    patience: int = 4  # evaluations (every eval_every epochs) without improvement
    eval_every: int = 5
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
    s1_lr: float = 1e-3
    s1_epochs: int = 300
    s1_batch: int = 128

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
            sas_epochs=60,
            eval_every=10,
            bpr_epochs=20,
            s1_epochs=60,
            patience=3,
        )


@dataclass
class Trained:
    config: TrainConfig
    data: Dataset
    text: torch.Tensor  # [n_items + 1, 384], row 0 zeros
    sasrec: SASRec
    bpr: BPRMF
    stage1: ALLMRecStage1
    history: dict[str, Any]
    fusion: dict[str, float] = field(default_factory=lambda: {"text": 0.0, "pop": 0.0})


def left_pad(seqs: list[list[int]] | list[Any], max_len: int) -> torch.Tensor:
    out = torch.zeros(len(seqs), max_len, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        tail = list(seq)[-max_len:]
        if tail:
            out[row, max_len - len(tail) :] = torch.as_tensor(tail, dtype=torch.int64)
    return out


def _valid_ndcg(scores: torch.Tensor, data: Dataset, users: np.ndarray) -> float:
    """NDCG@10 of the validation item, history excluded, warm items only."""
    scores = scores.clone()
    scores[:, ~torch.from_numpy(data.warm_mask)] = -torch.inf
    for row, u in enumerate(users):
        scores[row, data.train_seqs[u]] = -torch.inf
    target = torch.from_numpy(data.valid[users])
    tscore = scores.gather(1, target.unsqueeze(1))
    rank = (scores > tscore).sum(1).float()
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


def train_sasrec(cfg: TrainConfig, data: Dataset, hist: dict[str, Any]) -> SASRec:
    model = SASRec(
        data.n_items,
        cfg.dim,
        cfg.max_len,
        n_blocks=cfg.blocks,
        n_heads=cfg.heads,
        dropout=cfg.dropout,
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.sas_lr, betas=(0.9, 0.98))
    seqs = [s for s in data.train_seqs if len(s) >= 2]
    inputs = left_pad([s[:-1] for s in seqs], cfg.max_len)
    targets = left_pad([s[1:] for s in seqs], cfg.max_len)
    cold = torch.from_numpy(~data.warm_mask)
    users = _eval_users(data)
    val_hist = left_pad([data.train_seqs[u] for u in users], cfg.max_len)
    stopper = EarlyStopping(cfg.patience)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(1, cfg.sas_epochs + 1), desc="SASRec", unit="ep")
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(seqs), generator=gen)
        for start in range(0, len(seqs), cfg.sas_batch):
            idx = perm[start : start + cfg.sas_batch]
            h = model(inputs[idx])
            logits = h @ model.item_emb.weight.T
            # Cold items never appear in training: keep them out of the softmax
            # so their rows stay at initialisation (SASRec knows nothing of them).
            logits = logits.masked_fill(cold, -1e9)
            tgt = targets[idx]
            loss = F.cross_entropy(logits[tgt > 0], tgt[tgt > 0])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % cfg.eval_every == 0:
            model.eval()
            with torch.no_grad():
                ndcg = _valid_ndcg(model.user(val_hist) @ model.item_emb.weight.T, data, users)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_ndcg=f"{ndcg:.4f}")
            if stopper.should_stop(ndcg, model):
                break
    stopper.restore_best(model)
    model.eval()
    hist["sasrec"] = {"best_val_ndcg@10": stopper.best, "epochs": epoch}
    return model


def train_bpr(cfg: TrainConfig, data: Dataset, hist: dict[str, Any]) -> BPRMF:
    model = BPRMF(data.n_users, data.n_items, cfg.bpr_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.bpr_lr)
    pairs = np.array([(u, i) for u, s in enumerate(data.train_seqs) for i in s], dtype=np.int64)
    warm = np.flatnonzero(data.warm_mask)
    users = _eval_users(data)
    rng = np.random.default_rng(cfg.seed)
    stopper = EarlyStopping(cfg.patience)
    bar = tqdm(range(1, cfg.bpr_epochs + 1), desc="BPR-MF", unit="ep")
    for epoch in bar:
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
            loss.backward()
            opt.step()
        if epoch % cfg.eval_every == 0:
            with torch.no_grad():
                ndcg = _valid_ndcg(model.scores(torch.from_numpy(users)), data, users)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_ndcg=f"{ndcg:.4f}")
            if stopper.should_stop(ndcg, model):
                break
    stopper.restore_best(model)
    hist["bpr"] = {"best_val_ndcg@10": stopper.best, "epochs": epoch}
    return model


def train_stage1(
    cfg: TrainConfig, data: Dataset, sasrec: SASRec, text: torch.Tensor, hist: dict[str, Any]
) -> ALLMRecStage1:
    """A-LLMRec stage 1 against the frozen SASRec (see ALLMRecStage1 for the loss)."""
    model = ALLMRecStage1(cfg.dim, text.shape[1], cfg.joint_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.s1_lr)
    seqs = [s for s in data.train_seqs if len(s) >= 2]
    with torch.no_grad():
        states = sasrec(left_pad([s[:-1] for s in seqs], cfg.max_len))  # frozen, eval mode
    targets = left_pad([s[1:] for s in seqs], cfg.max_len)
    keep = targets > 0
    states, targets = states[keep], targets[keep]
    warm = torch.from_numpy(np.flatnonzero(data.warm_mask))
    col = torch.full((data.n_items + 1,), -1, dtype=torch.int64)
    col[warm] = torch.arange(len(warm))
    targets = col[targets]
    item_emb = sasrec.item_emb.weight.detach()[warm]
    text_w = text[warm]
    users = _eval_users(data)
    val_u = sasrec.user(left_pad([data.train_seqs[u] for u in users], cfg.max_len)).detach()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    stopper = EarlyStopping(cfg.patience)
    bar = tqdm(range(1, cfg.s1_epochs + 1), desc="A-LLMRec stage 1", unit="ep")
    n = len(targets)
    step_size = max(1, n // max(1, len(seqs) // cfg.s1_batch))
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, step_size):
            idx = perm[start : start + step_size]
            z_item, z_text = model.encode_item(item_emb), model.encode_text(text_w)
            j_item, j_text = model.item_dec(z_item), model.item_dec(z_text)
            matching = F.mse_loss(z_item, z_text)
            item_rec = F.mse_loss(j_item, item_emb)
            text_rec = F.mse_loss(model.text_dec(z_text), text_w)
            u = states[idx]
            rec = F.cross_entropy(u @ j_item.T, targets[idx]) + F.cross_entropy(
                u @ j_text.T, targets[idx]
            )
            loss = matching + cfg.alpha * item_rec + cfg.beta * text_rec + rec
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % cfg.eval_every == 0:
            model.eval()
            with torch.no_grad():
                table = torch.zeros(data.n_items + 1, cfg.dim)
                table[warm] = model.joint_from_item(item_emb)
                ndcg = _valid_ndcg(val_u @ table.T, data, users)
            bar.set_postfix(
                match=f"{matching.item():.4f}", rec=f"{rec.item():.3f}", val_ndcg=f"{ndcg:.4f}"
            )
            if stopper.should_stop(ndcg, model):
                break
    stopper.restore_best(model)
    model.eval()
    hist["stage1"] = {"best_val_ndcg@10": stopper.best, "epochs": epoch}
    return model


@torch.no_grad()
def fit_fusion(
    cfg: TrainConfig,
    data: Dataset,
    sasrec: SASRec,
    stage1: ALLMRecStage1,
    text: torch.Tensor,
    *,
    hist: dict[str, Any],
) -> dict[str, float]:
    """The hybrid head's two weights, chosen by validation NDCG@10 on a small grid.

    score(u, c) = <u, e_c + w_text * j_text(c)> + w_pop * log(1 + train count of c)
    where e_c is the SASRec item embedding (zero for cold items) and j_text the
    stage-1 text-path joint embedding. (0, 0) is plain stage-1 scoring of warm items.
    """
    users = _eval_users(data)
    u = sasrec.user(left_pad([data.train_seqs[x] for x in users], cfg.max_len))
    emb = sasrec.item_emb.weight.detach()
    j_text = stage1.joint_from_text(text)
    logpop = torch.log1p(torch.from_numpy(data.train_popularity()).float())
    grid = {}
    for w_text in (0.0, 0.25, 0.5):
        base = u @ (emb + w_text * j_text).T
        for w_pop in (0.0, 0.1, 0.2, 0.3, 0.5):
            grid[(w_text, w_pop)] = _valid_ndcg(base + w_pop * logpop, data, users)
    (w_text, w_pop), best = max(grid.items(), key=lambda kv: kv[1])
    hist["fusion"] = {
        "text": w_text,
        "pop": w_pop,
        "val_ndcg@10": best,
        "val_ndcg@10_plain": grid[(0.0, 0.0)],
    }
    return {"text": w_text, "pop": w_pop}


def text_table(cfg: TrainConfig, data: Dataset) -> torch.Tensor:
    from workers.training.text import encode_texts

    emb = encode_texts(data.item_text)
    return torch.cat([torch.zeros(1, emb.shape[1]), torch.from_numpy(emb)])


def train_all(cfg: TrainConfig, cache_dir: Path) -> Trained:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if cfg.synthetic:
        data = synthetic_dataset(seed=cfg.seed)
    else:
        data = load_dataset(
            cache_dir, cold_fraction=cfg.cold_fraction, seed=cfg.seed, max_users=cfg.max_users
        )
    hist: dict[str, Any] = {}
    t0 = time.perf_counter()
    text = text_table(cfg, data)
    hist["text_seconds"] = time.perf_counter() - t0
    sasrec = train_sasrec(cfg, data, hist)
    bpr = train_bpr(cfg, data, hist)
    stage1 = train_stage1(cfg, data, sasrec, text, hist)
    fusion = fit_fusion(cfg, data, sasrec, stage1, text, hist=hist)
    return Trained(cfg, data, text, sasrec, bpr, stage1, hist, fusion)


def save_run(trained: Trained, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "sasrec": trained.sasrec.state_dict(),
            "bpr": trained.bpr.state_dict(),
            "stage1": trained.stage1.state_dict(),
            "text": trained.text,
            "fusion": trained.fusion,
        },
        run_dir / "checkpoint.pt",
    )
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
    if cfg.synthetic:
        data = synthetic_dataset(seed=cfg.seed)
    else:
        data = load_dataset(
            cache_dir, cold_fraction=cfg.cold_fraction, seed=cfg.seed, max_users=cfg.max_users
        )
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    sasrec = SASRec(
        data.n_items,
        cfg.dim,
        cfg.max_len,
        n_blocks=cfg.blocks,
        n_heads=cfg.heads,
        dropout=cfg.dropout,
    )
    sasrec.load_state_dict(ckpt["sasrec"])
    sasrec.eval()
    bpr = BPRMF(data.n_users, data.n_items, cfg.bpr_dim)
    bpr.load_state_dict(ckpt["bpr"])
    text = ckpt["text"]
    stage1 = ALLMRecStage1(cfg.dim, text.shape[1], cfg.joint_dim)
    stage1.load_state_dict(ckpt["stage1"])
    stage1.eval()
    return Trained(
        cfg,
        data,
        text,
        sasrec,
        bpr,
        stage1,
        meta.get("history", {}),
        ckpt.get("fusion", {"text": 0.0, "pop": 0.0}),
    )


def main(argv: list[str] | None = None) -> int:
    from workers.training.evaluate import evaluate_run, print_report

    parser = argparse.ArgumentParser(prog="recstream train", description=__doc__)
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="runtime folder (the launcher passes RECSTREAM_HOME)",
    )
    parser.add_argument("--version", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--tiny", action="store_true", help="seconds-long synthetic run (tests)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.tiny() if args.tiny else TrainConfig()
    if args.seed is not None:
        cfg.seed = args.seed
    if args.threads is not None:
        cfg.threads = args.threads
    started = time.perf_counter()
    trained = train_all(cfg, args.home / "cache")
    run_dir = args.home / "runs" / args.version
    save_run(trained, run_dir)
    print(f"trained in {time.perf_counter() - started:.1f}s -> {run_dir}")
    if not args.no_eval:
        report = evaluate_run(trained)
        (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
