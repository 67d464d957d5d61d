"""Time-window splits of a dataset's interactions.

The default is a **global temporal split**: cut-off timestamps shared by all users, so that nothing a model
trains on happens after anything it is evaluated on (no temporal leakage). Window ``i`` holds the
interactions with ``cut[i-1] <= t < cut[i]`` (the first window starts at the earliest event, the last one
ends after the latest). With fractions, ``cut[i] = t_min + (t_max - t_min) * cumsum(fractions)[i]``.

``leave_last_n`` (an option, common in the literature) gives each user's last ``n`` events to the last
window, the ``n`` before to the previous window, and so on; everything older goes to the first window. It is
*not* leak-free across users (another user's later events may be in train) and is reported as such. A user's
events are ordered by time, then by :func:`tie_keys` (a hash of (user, item) keyed by ``split.tie_seed``, then
of the whole row): a same-second tie group that straddles a window boundary is cut at random, reproducibly,
and the same for any row order of the log. File order would decide it otherwise, and logs sorted by item
(MovieLens' ratings.csv: 3.6% of its leave-last-10 test rows sit in such groups) would send the highest item
ids to the test window.

``random_holdout`` is the protocol for logs without timestamps (``has_timestamps: false``, where the timestamp
column is only the file order): each user's events are shuffled (seeded) and cut by the window fractions with
a random offset per user (systematic sampling), so every window holds, in expectation exactly and per user
within one event, its fraction of each user's events; with ``folds: K`` it is K-fold (the test window is fold
``fold`` of a per-user K-partition; see :func:`random_holdout_windows`). ``auto`` resolves to ``temporal`` on timed data and to
``random_holdout`` on untimed data. The temporal protocols (``temporal``, ``leave_last_n``) are refused on an
untimed log, and a split that leaves a window empty is refused with its cause (constant or concentrated
timestamps, too few events per user) instead of handing empty windows to training.

Optional k-core filtering keeps users and items with at least ``k`` interactions, iterated to a fixed point,
before the split.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.configlib import TEMPORAL_METHODS, ConfigError, SplitBasis, SplitConfig, SplitMethod, to_dict
from recsys.data.schema import DATASET_YAML, Dataset, DatasetError, Role, write_dataset
from recsys.io import atomic_output_dir, write_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    """The dataset and its interactions cut into ordered, named windows (each sorted by time)."""

    dataset: Dataset
    windows: dict[str, pd.DataFrame]
    config: SplitConfig
    cutoffs: tuple[int, ...] = ()  # temporal: the len(windows) - 1 timestamps between windows

    @property
    def names(self) -> list[str]:
        return list(self.windows)

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.windows:
            raise KeyError(f"unknown split window {name!r}; windows: {self.names}")
        return self.windows[name]

    def before(self, name: str) -> pd.DataFrame:
        """All interactions in windows strictly before ``name`` (what a model may know at its start)."""
        names = self.names
        if name not in names:
            raise KeyError(f"unknown split window {name!r}; windows: {names}")
        parts = [self.windows[n] for n in names[: names.index(name)]]
        if not parts:
            return self.windows[names[0]].iloc[:0]
        return pd.concat(parts, ignore_index=True)

    def stats(self) -> dict:
        """Counts per window, and how many users and items of each later window are cold (unseen in train)."""
        sch = self.dataset.schema.tables["interactions"]
        ucol, icol = sch.names(Role.USER_ID)[0], sch.names(Role.ITEM_ID)[0]
        tcol = sch.names(Role.TIMESTAMP)[0]
        pos = self.dataset.schema.positive_label
        first = self.names[0]
        train = self.windows[first]
        train_users = pd.Index(train[ucol].unique())
        train_items = pd.Index(train[icol].unique())
        out: dict = {
            "method": self.config.method.value,
            "leak_free": self.config.method is SplitMethod.TEMPORAL,
            "cutoffs": list(self.cutoffs),
            "windows": {},
        }
        if self.config.folds:
            out["folds"], out["fold"] = self.config.folds, self.config.fold
        for name, df in self.windows.items():
            users = pd.Index(df[ucol].unique())
            items = pd.Index(df[icol].unique())
            w = {
                "interactions": int(len(df)),
                "positives": int((df[pos] > 0).sum()),
                "users": int(len(users)),
                "items": int(len(items)),
                "time_min": int(df[tcol].min()) if len(df) else None,
                "time_max": int(df[tcol].max()) if len(df) else None,
            }
            if name != first:
                w["cold_users"] = int((~users.isin(train_users)).sum())
                w["cold_items"] = int((~items.isin(train_items)).sum())
                w["interactions_with_cold_user"] = int((~df[ucol].isin(train_users)).sum())
                w["interactions_with_cold_item"] = int((~df[icol].isin(train_items)).sum())
            out["windows"][name] = w
        return out


def kcore_filter(df: pd.DataFrame, k: int, user_col: str, item_col: str) -> pd.DataFrame:
    """Keep rows whose user and item each have >= ``k`` rows, repeated until nothing changes."""
    if k <= 1:
        return df
    while True:
        uc = df[user_col].map(df[user_col].value_counts())
        ic = df[item_col].map(df[item_col].value_counts())
        keep = (uc >= k) & (ic >= k)
        if keep.all():
            return df
        df = df[keep.to_numpy()]
        if len(df) == 0:
            return df


def temporal_cutoffs(ts: np.ndarray, fractions: list[float], basis: SplitBasis = SplitBasis.SPAN) -> tuple[int, ...]:
    """Cut-offs at cumulative ``fractions`` of the time span [min(ts), max(ts)] (``span``) or of the events
    (``events``: the timestamp quantiles; a cut-off is the first timestamp of the later window, so events
    sharing a timestamp never straddle two windows)."""
    cum = np.cumsum(fractions)[:-1]
    if basis is SplitBasis.EVENTS:
        srt = np.sort(ts)
        # round before floor: cumsum([0.7, 0.1]) * 500 is 399.99999999999994, which must count as 400
        return tuple(int(srt[min(int(np.floor(np.round(c * len(srt), 6))), len(srt) - 1)]) for c in cum)
    t0, t1 = int(ts.min()), int(ts.max())
    return tuple(t0 + int(np.floor(np.round((t1 - t0) * c, 6))) for c in cum)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (a bijection whose output bits each depend on every input bit)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def tie_keys(inter: pd.DataFrame, user_col: str, item_col: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint64 keys per row, ordering events that share a user and a timestamp independently of row order.

    ``primary = mix64(hash(user, item) XOR mix64(seed))``: pseudo-random in the item id, so neither file order
    nor id size decides which event of a tie group is "later"; ``secondary = hash(whole row)`` orders the
    rare rows with the same (user, item, timestamp) (rows equal in every column are interchangeable).
    Hashes are pandas' (:func:`pandas.util.hash_pandas_object`, deterministic across runs and machines).
    """
    with np.errstate(over="ignore"):
        salt = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        ui = pd.util.hash_pandas_object(inter[[user_col, item_col]], index=False).to_numpy()
        primary = _mix64(ui ^ salt)
    secondary = pd.util.hash_pandas_object(inter, index=False).to_numpy()
    return primary, secondary


def resolve_method(ds: Dataset, cfg: SplitConfig) -> SplitConfig:
    """``cfg`` with ``auto`` resolved for ``ds`` (logged); a temporal method on an untimed log is a ConfigError."""
    method = cfg.method.resolve(ds.schema.has_timestamps)
    if cfg.folds and method is not SplitMethod.RANDOM_HOLDOUT:
        raise ConfigError(f"split.folds: k-fold is a random_holdout protocol, and split.method resolves to "
                          f"{method.value!r} on dataset {ds.schema.name!r} (--set split.method=random_holdout)")
    if method is not cfg.method:
        logger.info("split.method auto: %s (the dataset %s timestamps)", method.value,
                    "has" if ds.schema.has_timestamps else "has no")
        cfg = dataclasses.replace(cfg, method=method)
    if method in TEMPORAL_METHODS and not ds.schema.has_timestamps:
        raise ConfigError(
            f"split.method: {method.value!r} needs timestamps, but dataset {ds.schema.name!r} has none (an untimed "
            "log: its timestamp column is the file order); valid protocols: random_holdout "
            "(--set split.method=random_holdout), and its k-fold form (--set split.folds=K --set split.fold=I)"
        )
    return cfg


def split_dataset(ds: Dataset, cfg: SplitConfig) -> Split:
    """Split ``ds.interactions`` into the windows of ``cfg`` (see the module docstring). With
    ``cfg.validation`` the interactions before the test window are split again the same way (the validation
    protocol: the test window is never seen)."""
    cfg = resolve_method(ds, cfg)
    if cfg.validation:
        inner = dataclasses.replace(cfg, validation=False)
        outer = split_dataset(ds, inner)
        before = outer.before(outer.names[-1])
        logger.info("split.validation: %d interactions before the test window %r are split again",
                    len(before), outer.names[-1])
        return split_dataset(dataclasses.replace(ds, interactions=before.reset_index(drop=True)), inner)
    sch = ds.schema.tables["interactions"]
    ucol, icol = sch.names(Role.USER_ID)[0], sch.names(Role.ITEM_ID)[0]
    tcol = sch.names(Role.TIMESTAMP)[0]
    inter = ds.interactions
    if cfg.kcore:
        before = len(inter)
        inter = kcore_filter(inter, cfg.kcore, ucol, icol)
        logger.info("k-core (k=%d): kept %d of %d interactions", cfg.kcore, len(inter), before)
        if len(inter) == 0:
            raise ValueError(f"split.kcore={cfg.kcore}: no interaction survives the k-core filter")
    names = list(cfg.windows)
    ts = inter[tcol].to_numpy()
    cutoffs: tuple[int, ...] = ()
    if cfg.method is SplitMethod.TEMPORAL:
        cutoffs = tuple(cfg.cutoffs) or temporal_cutoffs(ts, list(cfg.windows.values()), cfg.basis)
        win = np.searchsorted(np.asarray(cutoffs, dtype=np.int64), ts, side="right")
    elif cfg.method is SplitMethod.RANDOM_HOLDOUT:
        win = random_holdout_windows(pd.factorize(inter[ucol])[0], list(cfg.windows.values()), cfg.seed,
                                     cfg.folds, cfg.fold)
    else:
        ucodes = pd.factorize(inter[ucol])[0]
        primary, secondary = tie_keys(inter, ucol, icol, cfg.tie_seed)
        order = np.lexsort((secondary, primary, ts, ucodes))  # by user, then time, then the tie keys
        users_sorted = ucodes[order]
        boundary = np.r_[True, users_sorted[1:] != users_sorted[:-1]]
        run_end = np.r_[np.flatnonzero(boundary)[1:], len(order)]
        run_id = np.cumsum(boundary) - 1
        r_sorted = run_end[run_id] - 1 - np.arange(len(order))  # 0 for each user's last event
        nw = len(names)
        w_sorted = np.where(r_sorted < cfg.n * (nw - 1), nw - 1 - r_sorted // cfg.n, 0)
        win = np.empty(len(order), dtype=np.int64)
        win[order] = w_sorted
    windows = {name: inter[win == i].reset_index(drop=True) for i, name in enumerate(names)}
    empty = [name for name, df in windows.items() if len(df) == 0]
    if empty:
        raise DatasetError(_empty_windows_cause(ds.schema.name, inter, ucol, ts, cfg, cutoffs, empty))
    return Split(dataset=ds, windows=windows, config=cfg, cutoffs=cutoffs)


def random_holdout_windows(users: np.ndarray, fractions: list[float], seed: int = 0, folds: int = 0,
                           fold: int = 0) -> np.ndarray:
    """(R,) window index of each row for the ``random_holdout`` protocol; ``users`` (R,) int codes.

    Each user's rows are put in a seeded random order; row ``p`` (0-based) of a user with ``n`` rows gets the
    position ``q = (p + o) / n`` with the user's random offset ``o`` in [0, 1) and goes to the window whose
    cumulative fraction interval holds ``q``. So a window of fraction ``f`` receives ``f * n`` of the user's
    rows in expectation and ``floor`` or ``ceil`` of it always; a user with fewer rows than windows lands in
    windows at random, in proportion to the fractions.

    ``folds = K`` (k-fold): the last window takes the rows with ``q`` in ``[fold / K, (fold + 1) / K)``, and the
    others' positions ``q' = (q - 1/K [q >= (fold + 1) / K]) / (1 - 1/K)`` are cut by the other windows'
    fractions, renormalised. The positions do not depend on ``fold``, so the K test windows partition the rows.
    """
    rng = np.random.default_rng(seed)
    n_rows = len(users)
    order = np.lexsort((rng.random(n_rows), users))  # by user, then random
    u = users[order]
    start = np.r_[True, u[1:] != u[:-1]] if n_rows else np.zeros(0, dtype=bool)
    run_start = np.flatnonzero(start)
    run_id = np.cumsum(start) - 1
    pos = np.arange(n_rows) - run_start[run_id]
    size = np.diff(np.r_[run_start, n_rows])[run_id]
    offset = rng.random(len(run_start))[run_id]
    q = (pos + offset) / size
    win = np.empty(n_rows, dtype=np.int64)
    if not folds:
        win[order] = np.searchsorted(np.cumsum(fractions)[:-1], q, side="right")
        return win
    lo, hi = fold / folds, (fold + 1) / folds
    test = (q >= lo) & (q < hi)
    rest = np.where(q >= hi, q - 1.0 / folds, q) / (1.0 - 1.0 / folds)
    head = np.asarray(fractions[:-1], dtype=np.float64)
    w = np.searchsorted(np.cumsum(head / head.sum())[:-1], np.minimum(rest, np.nextafter(1.0, 0.0)), side="right")
    win[order] = np.where(test, len(fractions) - 1, w)
    return win


def _empty_windows_cause(name: str, inter: pd.DataFrame, ucol: str, ts: np.ndarray, cfg: SplitConfig,
                         cutoffs: tuple[int, ...], empty: list[str]) -> str:
    """The one-line refusal of a split that leaves ``empty`` windows, naming the likely cause and the fix."""
    head = f"split of {name!r}: window(s) {empty} would be empty"
    if cfg.method is SplitMethod.TEMPORAL:
        values, counts = np.unique(ts, return_counts=True)
        if len(values) == 1:
            return (f"{head}: all {len(ts):,} events have the same timestamp {int(values[0])} (constant "
                    "timestamps); a temporal split needs times that vary: use --set split.method=random_holdout")
        top = int(np.argmax(counts))
        share = counts[top] / len(ts)
        if cfg.cutoffs:
            return (f"{head}: the cut-offs {list(cutoffs)} leave no event in them (events span "
                    f"{int(ts.min())} .. {int(ts.max())}); set split.cutoffs inside that range")
        if share >= min(cfg.windows.values()):
            return (f"{head}: {share:.1%} of the {len(ts):,} events share the timestamp {int(values[top])} "
                    f"({len(values):,} distinct timestamps), so no cut-off can separate them; use "
                    "--set split.method=random_holdout, or fix the timestamps")
        return (f"{head}: the events are unevenly spread over {int(ts.min())} .. {int(ts.max())} "
                f"(cut-offs {list(cutoffs)}); use --set split.basis=events (cut at time quantiles of the events)")
    per_user = inter[ucol].value_counts().to_numpy()
    what = (f"leave_last_n gives each user's last {cfg.n} events to each later window; lower split.n"
            if cfg.method is SplitMethod.LEAVE_LAST_N else "the window fractions are too small for them")
    return (f"{head}: the {len(per_user):,} users have at most {int(per_user.max())} events each (median "
            f"{int(np.median(per_user))}), and {what}")


def write_split(split: Split, out: str | Path, overwrite: bool = False) -> None:
    """Write each window as a canonical dataset folder ``OUT/<window>/`` plus ``OUT/split.json``."""
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for name, df in split.windows.items():
            if len(df) == 0:
                continue
            part = dataclasses.replace(split.dataset, interactions=df, path=None)
            write_dataset(part, tmp / name)
        truth = split.dataset.truth_dir
        if truth is not None:
            shutil.copytree(truth, tmp / "truth")
        write_json(tmp / "split.json", {"config": to_dict(split.config), **split.stats()})
    logger.info("wrote split to %s (%s)", out, ", ".join(split.names))


__all__ = ["Split", "split_dataset", "resolve_method", "random_holdout_windows", "write_split", "kcore_filter",
           "temporal_cutoffs", "tie_keys", "DATASET_YAML"]
