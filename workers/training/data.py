"""MovieLens-100k, item text and the splits every model and metric share.

The data comes from the RecBole wheel on PyPI (``recbole/dataset_example/
ml-100k``), fetched once with ``pip download --no-deps`` into a cache folder;
no dataset hub is contacted.

Splits (all seeded by the *split* seed, which is not the training seed, so
that several training seeds are measured on one split; all deterministic):

- **Cold items**: ``cold_fraction`` of the items, drawn uniformly with the
  split seed, are removed from training entirely (every interaction with
  them). ``cold_fraction = 0`` is the standard protocol: the complete dataset.
- **Warm leave-one-out**: each user's interactions with warm items, in
  chronological order (equal timestamps keep the file's order, as RecBole
  does; ML-100k rates many items in the same second), give: last = test,
  second-to-last = validation, the rest = training.
- **Cold test**: for each user who interacted with a cold item, the target is
  the user's last cold interaction and the history is the user's warm items
  rated strictly before it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "fetch_ml100k", "load_dataset", "synthetic_dataset"]

RECBOLE_VERSION = "1.2.1"
_FILES = ("ml-100k.inter", "ml-100k.item")


def fetch_ml100k(cache_dir: Path) -> Path:
    """Return a folder holding ml-100k.inter/.item, downloading the wheel once."""
    target = cache_dir / "ml-100k"
    if all((target / name).is_file() for name in _FILES):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"recbole=={RECBOLE_VERSION}",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(cache_dir),
            ],
            check=True,
        )
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in _FILES:
            data = archive.read(f"recbole/dataset_example/ml-100k/{name}")
            (target / name).write_bytes(data)
    return target


@dataclass
class Dataset:
    """Interactions and splits; item ids are 1..n_items (0 is padding)."""

    n_users: int
    n_items: int
    item_raw_ids: list[str]  # index i-1 -> raw id of item i
    item_text: list[str]  # index i-1 -> text of item i
    cold_items: np.ndarray  # sorted item ids held out of training
    train_seqs: list[list[int]]  # per user, warm, chronological, without valid/test
    valid: np.ndarray  # per user, the validation item
    test: np.ndarray  # per user, the test item
    cold_users: np.ndarray  # users with a cold test case
    cold_hist: list[list[int]]  # their warm history before the cold target
    cold_target: np.ndarray
    all_items_of_user: list[set[int]] = field(default_factory=list)  # every interaction
    data_hash: str = ""

    @property
    def warm_mask(self) -> np.ndarray:
        """Boolean [n_items + 1]: True for items seen in training (never padding)."""
        mask = np.ones(self.n_items + 1, dtype=bool)
        mask[0] = False
        mask[self.cold_items] = False
        return mask

    @property
    def cold_interaction_share(self) -> float:
        """Share of all interactions (every user, every split) that are with cold items."""
        is_cold = ~self.warm_mask
        is_cold[0] = False
        total = sum(len(items) for items in self.all_items_of_user)
        cold = sum(int(is_cold[list(items)].sum()) for items in self.all_items_of_user if items)
        return cold / max(1, total)

    def train_popularity(self) -> np.ndarray:
        """Interaction counts per item id in the training part only ([n_items + 1])."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for seq in self.train_seqs:
            np.add.at(counts, np.asarray(seq, dtype=np.int64), 1)
        return counts


def _item_text(title: str, year: str, genres: str) -> str:
    year_part = f" ({year})" if year else ""
    genre_part = ", ".join(genres.split()) if genres else "unknown"
    return f"{title}{year_part}. Genres: {genre_part}."


def _build(
    users: np.ndarray,
    items: np.ndarray,
    stamps: np.ndarray,
    item_raw_ids: list[str],
    item_text: list[str],
    *,
    cold_fraction: float,
    seed: int,
    data_hash: str,
) -> Dataset:
    n_users = int(users.max()) + 1
    n_items = len(item_raw_ids)
    rng = np.random.default_rng(seed)
    n_cold = round(cold_fraction * n_items)
    cold = np.sort(rng.choice(np.arange(1, n_items + 1), size=n_cold, replace=False))
    is_cold = np.zeros(n_items + 1, dtype=bool)
    is_cold[cold] = True

    # Stable: equal timestamps keep file order. Breaking ties by item id would
    # make the test item the highest id of the last second (ids follow the
    # catalogue's age and popularity), an artefact no model should learn.
    order = np.lexsort((np.arange(len(users)), stamps, users))
    users, items, stamps = users[order], items[order], stamps[order]
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    train_seqs: list[list[int]] = []
    valid = np.zeros(n_users, dtype=np.int64)
    test = np.zeros(n_users, dtype=np.int64)
    cold_users: list[int] = []
    cold_hist: list[list[int]] = []
    cold_target: list[int] = []
    all_items: list[set[int]] = []
    for u in range(n_users):
        seq_items = items[bounds[u] : bounds[u + 1]]
        seq_stamps = stamps[bounds[u] : bounds[u + 1]]
        all_items.append({int(i) for i in seq_items})
        warm_sel = ~is_cold[seq_items]
        warm = [int(i) for i in seq_items[warm_sel]]
        if len(warm) < 3:
            # Too short for leave-one-out: train on what there is, no valid/test.
            train_seqs.append(warm)
            continue
        train_seqs.append(warm[:-2])
        valid[u], test[u] = warm[-2], warm[-1]
        cold_pos = np.flatnonzero(~warm_sel)
        if cold_pos.size:
            last = int(cold_pos[-1])
            before = seq_items[:last][warm_sel[:last] & (seq_stamps[:last] < seq_stamps[last])]
            if before.size:
                cold_users.append(u)
                cold_hist.append([int(i) for i in before])
                cold_target.append(int(seq_items[last]))
    return Dataset(
        n_users=n_users,
        n_items=n_items,
        item_raw_ids=item_raw_ids,
        item_text=item_text,
        cold_items=cold,
        train_seqs=train_seqs,
        valid=valid,
        test=test,
        cold_users=np.asarray(cold_users, dtype=np.int64),
        cold_hist=cold_hist,
        cold_target=np.asarray(cold_target, dtype=np.int64),
        all_items_of_user=all_items,
        data_hash=data_hash,
    )


def load_dataset(
    cache_dir: Path, *, cold_fraction: float = 0.15, seed: int = 42, max_users: int = 0
) -> Dataset:
    """Load ML-100k and split it (``max_users`` > 0 keeps the first users, for tests)."""
    folder = fetch_ml100k(cache_dir)
    digest = hashlib.sha256()
    for name in _FILES:
        digest.update((folder / name).read_bytes())

    raw_ids: list[str] = []
    texts: list[str] = []
    with (folder / "ml-100k.item").open(encoding="utf-8", errors="replace") as handle:
        next(handle)
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (4 - len(parts))
            raw_ids.append(parts[0])
            texts.append(_item_text(parts[1].strip(), parts[2].strip(), parts[3].strip()))
    index = {raw: i + 1 for i, raw in enumerate(raw_ids)}

    user_index: dict[str, int] = {}
    us: list[int] = []
    its: list[int] = []
    ts: list[float] = []
    with (folder / "ml-100k.inter").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            user, item, _rating, stamp = line.rstrip("\n").split("\t")
            u = user_index.setdefault(user, len(user_index))
            if max_users and u >= max_users:
                continue
            us.append(u)
            its.append(index[item])
            ts.append(float(stamp))
    return _build(
        np.asarray(us, dtype=np.int64),
        np.asarray(its, dtype=np.int64),
        np.asarray(ts, dtype=np.float64),
        raw_ids,
        texts,
        cold_fraction=cold_fraction,
        seed=seed,
        data_hash=f"sha256:{digest.hexdigest()}:users={max_users or 'all'}",
    )


def synthetic_dataset(
    n_users: int = 200, n_items: int = 120, seq_len: int = 20, *, seed: int = 0
) -> Dataset:
    """A small planted-structure dataset for tests: item i is followed by i+1.

    Users walk through the catalog in order from a random start, so the next
    item is predictable and a working model ranks it first.
    """
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    raw_ids = [str(i) for i in range(1, n_items + 1)]
    texts = [
        f"Movie {i} (19{50 + i % 50}). Genres: {genres[(i // 10) % len(genres)]}."
        for i in range(1, n_items + 1)
    ]
    us: list[int] = []
    its: list[int] = []
    ts: list[float] = []
    for u in range(n_users):
        start = int(rng.integers(1, n_items + 1))
        for step in range(seq_len):
            us.append(u)
            its.append((start - 1 + step) % n_items + 1)
            ts.append(float(step))
    return _build(
        np.asarray(us, dtype=np.int64),
        np.asarray(its, dtype=np.int64),
        np.asarray(ts, dtype=np.float64),
        raw_ids,
        texts,
        cold_fraction=0.15,
        seed=seed,
        data_hash=f"synthetic:{n_users}x{n_items}x{seq_len}:seed={seed}",
    )
