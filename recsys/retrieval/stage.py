"""The retrieval stage: two-tower + FAISS candidates, popularity for cold users and as a fill.

Shapes: B requests, k / C candidates per request, N items, D embedding dim, L history length, U rows of the
users table, F categorical and Fn numeric user-tower inputs.

``fit`` trains the two-tower model on the positive interactions of the train window (early-stopped on the
next window), embeds the N catalogue items, builds the FAISS index and counts item popularity.
``retrieve`` merges the sources (ANN, any extra sources such as a graph source, popularity) into
:class:`~recsys.retrieval.sources.Candidates`; ``rank`` makes the stage alone a :class:`~recsys.types.Ranker`.

Model inputs are found through the dataset schema roles, never by column name:
* user tower: user id; mean of the last L engaged items' id embeddings; the users table's CATEGORICAL and
  NUMERIC columns; the interactions table's CONTEXT columns (categorical if declared so, or integer-valued
  with at most 48 distinct values; numeric otherwise) taken from the event (training) or
  ``Requests.context`` (serving; absent values use the OOV code / 0).
* item tower: item id; the items table's CATEGORICAL and NUMERIC columns.
Numeric inputs are standardised, ``clip((x - mean) / std, -5, 5)``, after log1p for non-negative
heavy-tailed columns (max > 100 x median); missing values become 0 (the mean).

Saved folder (no pickle anywhere)::

    retrieval.json          format version, RetrievalConfig, TowerSpec, feature encoders (names, stats)
    model.safetensors       two-tower weights (safetensors.torch.save_model: the shared item table once)
    index.faiss             faiss.write_index
    popularity.npy          (N,) float64 engagement counts
    user_table_ids.parquet  users-table ids (Vocab), user_table_cat.npy (U+1, F_u), user_table_num.npy
    context_vocab_<j>.parquet  one vocabulary per categorical context column
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys.bundle import check_name
from recsys.collab import ItemItem
from recsys.configlib import from_dict, to_dict
from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset, Kind, Role
from recsys.data.vocab import Vocab
from recsys.deadline import checkpoint
from recsys.retrieval.config import RetrievalConfig, TwoTowerConfig
from recsys.graph.pagerank import GraphSource
from recsys.io import read_stage_meta
from recsys.retrieval.index import AnnIndex
from recsys.retrieval.sources import (
    AnnSource, Candidates, CandidateSource, CollabSource, PopularitySource, cold_rows, merge_candidates,
    sorted_member,
)
from recsys.retrieval.train import TrainExamples, UserInputs, ValidSet, pad_history, train_two_tower
from recsys.retrieval.two_tower import TowerSpec, TwoTower
from recsys.stages.base import FitContext
from recsys.types import Ragged, Requests, Results

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DAY = 86_400
_MAX_CONTEXT_LEVELS = 48


# ------------------------------------------------------------------------------------------------------------
# Feature encoding
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NumericStats:
    """z = clip((f(x) - mean) / std, -5, 5), f = log1p if ``log`` else identity; NaN -> 0."""

    name: str
    mean: float
    std: float
    log: bool

    @classmethod
    def fit(cls, name: str, values) -> "NumericStats":
        x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
        x = x[np.isfinite(x)]
        log = bool(len(x) and x.min() >= 0 and x.max() > 100 * max(np.median(x), 1e-12))
        if log:
            x = np.log1p(x)
        mean = float(x.mean()) if len(x) else 0.0
        std = float(x.std()) if len(x) else 1.0
        return cls(name, mean, std if std > 0 else 1.0, log)

    def apply(self, values) -> np.ndarray:
        x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
        if self.log:
            x = np.log1p(np.maximum(x, 0))
        z = np.clip((x - self.mean) / self.std, -5, 5)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _vocab(values) -> Vocab:
    """Vocabulary of the non-missing values (missing / unseen values encode to the OOV index); a pandas
    Categorical is reduced to its plain values so the vocabulary saves and encodes like any other."""
    s = pd.Series(values).dropna()
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(s.dtype.categories.dtype)
    return Vocab(s.unique())


def _is_categorical_context(spec_kind: Kind | None, values: pd.Series) -> bool:
    if spec_kind is Kind.CATEGORICAL:
        return True
    if spec_kind is Kind.NUMERIC:
        return False
    if not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return True
    x = values.dropna().to_numpy(dtype=np.float64)
    return bool(len(x) and np.all(x == np.round(x)) and pd.Series(x).nunique() <= _MAX_CONTEXT_LEVELS)


@dataclasses.dataclass
class FeatureEncoder:
    """Maps users-table rows, event context and request context to user-tower inputs (see module docstring).

    user_index     Vocab over the users table's ids (row U = unknown user); None without a users table
    user_cat       (U + 1, F_u) int64 codes of the categorical user columns (row U: OOV codes)
    user_num       (U + 1, Fn_u) float32 standardised numeric user columns (row U: 0)
    """

    n_items: int
    history_len: int
    user_cat_names: list[str]
    user_cat_cards: list[int]
    user_num_stats: list[NumericStats]
    user_index: Vocab | None
    user_cat: np.ndarray
    user_num: np.ndarray
    context_cat_names: list[str]
    context_vocabs: list[Vocab]
    context_num_stats: list[NumericStats]

    @property
    def cat_cards(self) -> tuple[int, ...]:
        return tuple(self.user_cat_cards) + tuple(v.size for v in self.context_vocabs)

    @property
    def n_numeric(self) -> int:
        return len(self.user_num_stats) + len(self.context_num_stats)

    @classmethod
    def fit(cls, ds: Dataset, events: pd.DataFrame, n_items: int, history_len: int) -> "FeatureEncoder":
        sch = ds.schema
        user_cat_names: list[str] = []
        user_cat_cards: list[int] = []
        user_num_stats: list[NumericStats] = []
        user_index = None
        u_cat = np.zeros((1, 0), np.int64)
        u_num = np.zeros((1, 0), np.float32)
        if ds.users is not None and "users" in sch.tables:
            uspec = sch.tables["users"]
            users = ds.users
            user_index = Vocab(users[uspec.names(Role.USER_ID)[0]].to_numpy())
            cats, nums = [], []
            for c in uspec.names(Role.CATEGORICAL):
                v = _vocab(users[c])
                user_cat_names.append(c)
                user_cat_cards.append(v.size)
                cats.append(np.r_[v.encode(users[c].to_numpy()), v.oov])
            for c in uspec.names(Role.NUMERIC):
                st = NumericStats.fit(c, users[c])
                user_num_stats.append(st)
                nums.append(np.r_[st.apply(users[c]), 0.0])
            u = len(users) + 1
            u_cat = np.stack(cats, axis=1).astype(np.int64) if cats else np.zeros((u, 0), np.int64)
            u_num = np.stack(nums, axis=1).astype(np.float32) if nums else np.zeros((u, 0), np.float32)
        ctx_names, ctx_vocabs, ctx_num = [], [], []
        ispec = sch.tables["interactions"]
        for c in ispec.names(Role.CONTEXT):
            if c not in events.columns:
                continue
            if _is_categorical_context(ispec.columns[c].kind, events[c]):
                ctx_names.append(c)
                ctx_vocabs.append(_vocab(events[c]))
            else:
                ctx_num.append(NumericStats.fit(c, events[c]))
        return cls(n_items, history_len, user_cat_names, user_cat_cards, user_num_stats, user_index, u_cat, u_num,
                   ctx_names, ctx_vocabs, ctx_num)

    def _user_rows(self, ext_ids: np.ndarray | None, b: int) -> np.ndarray:
        unknown = len(self.user_cat) - 1
        if self.user_index is None or ext_ids is None:
            return np.full(b, unknown, dtype=np.int64)
        return self.user_index.encode(ext_ids)

    def _features(self, rows: np.ndarray, context: dict) -> tuple[np.ndarray, np.ndarray]:
        b = len(rows)
        cat = [self.user_cat[rows]]
        for name, vocab in zip(self.context_cat_names, self.context_vocabs):
            vals = context.get(name)
            cat.append((vocab.encode(np.asarray(vals)) if vals is not None else np.full(b, vocab.oov))[:, None])
        num = [self.user_num[rows]]
        for st in self.context_num_stats:
            vals = context.get(st.name)
            num.append((st.apply(vals) if vals is not None else np.zeros(b, np.float32))[:, None])
        return (np.concatenate(cat, axis=1).astype(np.int64), np.concatenate(num, axis=1).astype(np.float32))

    def encode_events(self, user_ids: np.ndarray, context: dict) -> tuple[np.ndarray, np.ndarray]:
        """(cat (R, F), num (R, Fn)) of R events of external ``user_ids`` with context columns ``context``."""
        return self._features(self._user_rows(user_ids, len(user_ids)), context)

    def encode_requests(self, requests: Requests, catalog: Catalog) -> UserInputs:
        b = len(requests)
        ext = requests.user_ids
        if ext is None:  # known users' external ids from the catalogue; OOV users have unknown features
            rows = np.full(b, len(self.user_cat) - 1, dtype=np.int64)
            known = requests.users < catalog.users.oov
            if self.user_index is not None and known.any():
                rows[known] = self.user_index.encode(catalog.users.ids[requests.users[known]])
        else:
            rows = self._user_rows(np.asarray(ext), b)
        cat, num = self._features(rows, requests.context)
        hist = pad_history(requests.history.last(self.history_len), self.history_len, self.n_items) \
            if self.history_len else np.full((b, 1), self.n_items, dtype=np.int64)
        hist = np.where((hist >= 0) & (hist < self.n_items), hist, self.n_items)
        users = np.minimum(requests.users, catalog.users.oov)
        return UserInputs(users, hist, cat, num)

    # save / load ------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {
            "n_items": self.n_items,
            "history_len": self.history_len,
            "user_cat_names": self.user_cat_names,
            "user_cat_cards": self.user_cat_cards,
            "user_num_stats": [dataclasses.asdict(s) for s in self.user_num_stats],
            "has_user_table": self.user_index is not None,
            "context_cat_names": self.context_cat_names,
            "context_num_stats": [dataclasses.asdict(s) for s in self.context_num_stats],
        }

    def save(self, folder: Path) -> None:
        if self.user_index is not None:
            self.user_index.save(folder / "user_table_ids.parquet")
        np.save(folder / "user_table_cat.npy", self.user_cat)
        np.save(folder / "user_table_num.npy", self.user_num)
        for j, v in enumerate(self.context_vocabs):
            v.save(folder / f"context_vocab_{j}.parquet")

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "FeatureEncoder":
        user_index = Vocab.load(folder / "user_table_ids.parquet") if meta["has_user_table"] else None
        u_cat = np.load(folder / "user_table_cat.npy", allow_pickle=False)
        u_num = np.load(folder / "user_table_num.npy", allow_pickle=False)
        vocabs = [Vocab.load(folder / f"context_vocab_{j}.parquet") for j in range(len(meta["context_cat_names"]))]
        return cls(
            int(meta["n_items"]), int(meta["history_len"]), list(meta["user_cat_names"]),
            [int(c) for c in meta["user_cat_cards"]], [NumericStats(**s) for s in meta["user_num_stats"]],
            user_index, u_cat, u_num, list(meta["context_cat_names"]), vocabs,
            [NumericStats(**s) for s in meta["context_num_stats"]],
        )


def item_features(ds: Dataset, catalog: Catalog) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """(cards, item_cat (N + 1, F_i) int64, item_num (N + 1, Fn_i) float32) from the items table's
    CATEGORICAL / NUMERIC columns, aligned to catalogue item indices (row N and items absent from the table:
    OOV codes / 0)."""
    n = catalog.n_items
    if ds.items is None or "items" not in ds.schema.tables:
        return (), np.zeros((n + 1, 0), np.int64), np.zeros((n + 1, 0), np.float32)
    spec = ds.schema.tables["items"]
    items = ds.items
    idx = catalog.items.encode(items[spec.names(Role.ITEM_ID)[0]].to_numpy())
    ok = idx < n
    cards, cats, nums = [], [], []
    for c in spec.names(Role.CATEGORICAL):
        v = _vocab(items[c])
        col = np.full(n + 1, v.oov, dtype=np.int64)
        col[idx[ok]] = v.encode(items[c].to_numpy())[ok]
        cards.append(v.size)
        cats.append(col)
    for c in spec.names(Role.NUMERIC):
        st = NumericStats.fit(c, items[c])
        col = np.zeros(n + 1, dtype=np.float32)
        col[idx[ok]] = st.apply(items[c])[ok]
        nums.append(col)
    item_cat = np.stack(cats, axis=1) if cats else np.zeros((n + 1, 0), np.int64)
    item_num = np.stack(nums, axis=1) if nums else np.zeros((n + 1, 0), np.float32)
    return tuple(cards), item_cat, item_num


def graph_source(ds: Dataset, catalog: Catalog, users: np.ndarray, items: np.ndarray, times: np.ndarray,
                 cfg: RetrievalConfig) -> GraphSource:
    """The PPR candidate source over the item graph of the given engagements plus the dataset's explicit
    item links (both in catalogue indices)."""
    src = dst = None
    if ds.item_links is not None and "item_links" in ds.schema.tables:
        spec = ds.schema.tables["item_links"]
        src = catalog.items.encode(ds.item_links[spec.names(Role.SRC)[0]].to_numpy())
        dst = catalog.items.encode(ds.item_links[spec.names(Role.DST)[0]].to_numpy())
        ok = (src < catalog.n_items) & (dst < catalog.n_items)
        src, dst = src[ok], dst[ok]
    return GraphSource(cfg=cfg.ppr).fit_log(users, items, times, catalog.n_items, cfg.graph, src, dst)


def _dedup_rows(r: Ragged, n: int, minus: Ragged | None = None) -> Ragged:
    """Unique items per row (sorted), without the items of the same row of ``minus``."""
    rows = np.repeat(np.arange(len(r), dtype=np.int64), r.lengths())
    keys = np.sort(rows * (n + 1) + r.values)  # sort-based: numpy 2.4's hash np.unique is slow on many keys
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
    if minus is not None and len(minus.values):
        mrows = np.repeat(np.arange(len(minus), dtype=np.int64), minus.lengths())
        keys = keys[~sorted_member(keys, np.sort(mrows * (n + 1) + minus.values))]
    out_rows, vals = keys // (n + 1), keys % (n + 1)
    return Ragged(np.r_[0, np.cumsum(np.bincount(out_rows, minlength=len(r)))], vals)


def union_rows(a: Ragged | None, b: Ragged | None) -> Ragged | None:
    """Row-wise concatenation of two B-row Raggeds (duplicates kept; order within a row: a then b)."""
    if a is None:
        return b
    if b is None:
        return a
    rows = np.r_[np.repeat(np.arange(len(a)), a.lengths()), np.repeat(np.arange(len(b)), b.lengths())]
    vals = np.r_[a.values, b.values]
    order = np.argsort(rows, kind="stable")
    return Ragged(np.r_[0, np.cumsum(np.bincount(rows, minlength=len(a)))], vals[order])


# ------------------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------------------


class RetrievalStage:
    """Candidate generation: two-tower ANN + extra sources + popularity. ``name`` = "retrieval"."""

    name = "retrieval"

    def __init__(self, cfg: RetrievalConfig | None = None) -> None:
        self.cfg: RetrievalConfig | None = cfg
        self.catalog: Catalog | None = None
        self.model: TwoTower | None = None
        self.encoder: FeatureEncoder | None = None
        self.index: AnnIndex | None = None
        self.popularity: PopularitySource | None = None
        self.item_vectors: np.ndarray | None = None
        self.spec: TowerSpec | None = None
        self.extra_sources: dict[str, tuple[CandidateSource, float]] = {}
        self.history: list[dict] = []

    # ---------------------------------------------------------------------------------------------------
    def fit(self, ctx: FitContext) -> "RetrievalStage":
        """Train on the positives of ``ctx.window_df`` (the first window), early-stop on ``ctx.valid`` (the
        next window; None: no early stopping), with the config given to the constructor."""
        if not isinstance(self.cfg, RetrievalConfig):
            raise TypeError(f"RetrievalStage: the constructor needs a RetrievalConfig, got {type(self.cfg).__name__}")
        return self._fit(ctx.ds, ctx.catalog, ctx.window_df, ctx.valid, self.cfg)

    def _fit(self, ds: Dataset, catalog: Catalog, train: pd.DataFrame, valid: pd.DataFrame | None,
             cfg: RetrievalConfig) -> "RetrievalStage":
        tt = cfg.two_tower
        label = ds.schema.positive_label
        for name, df in (("train", train), ("valid", valid)):
            if df is not None and label not in df.columns:
                raise ValueError(f"RetrievalStage.fit: {name} has no positive label column {label!r}")
        pos = positives(train, label)
        users, items, times = catalog.encode(pos)
        keep = (items < catalog.items.oov) & (users < catalog.users.oov)
        if keep.sum() < 2:
            raise ValueError(f"RetrievalStage.fit: train has {int(keep.sum())} usable positive interactions (need 2)")
        pos = pos[keep]
        users, items, times = users[keep], items[keep], times[keep]
        n = catalog.n_items
        encoder = FeatureEncoder.fit(ds, pos, n, tt.history_len)
        ctx = {c: pos[c].to_numpy() for c in encoder.context_cat_names + [s.name for s in encoder.context_num_stats]}
        cat, num = encoder.encode_events(pos[catalog.user_col].to_numpy(), ctx)
        examples = TrainExamples.build(users, items, times, n, tt.history_len, cat, num)
        self.cfg, self.catalog, self.encoder = cfg, catalog, encoder
        validset = self._valid_set(valid, pos, label, tt) if valid is not None else None

        icards, icat, inum = item_features(ds, catalog)
        spec = TowerSpec(
            n_users=catalog.users.size, n_items=n, dim=tt.dim, emb_dim=tt.emb_dim, feature_dim=tt.feature_dim,
            hidden=tuple(tt.hidden), user_cat_cards=encoder.cat_cards, user_n_numeric=encoder.n_numeric,
            item_cat_cards=icards, item_n_numeric=inum.shape[1], use_history=tt.history_len > 0,
            temperature=tt.temperature, history_encoder=tt.history_encoder, history_len=tt.history_len,
            attention_layers=tt.attention_layers, attention_heads=tt.attention_heads,
        )
        with torch.random.fork_rng():  # seeded initial weights without touching the caller's torch RNG
            torch.manual_seed(tt.seed)
            model = TwoTower.from_spec(spec)
        model.item_tower.item_cat.copy_(torch.from_numpy(icat))
        model.item_tower.item_num.copy_(torch.from_numpy(inum))
        logger.info(
            "two-tower: %d examples, %d users, %d items, %d valid users, user inputs %d categorical + %d numeric, "
            "item inputs %d categorical + %d numeric",
            len(examples), catalog.n_users, n, 0 if validset is None else len(validset), len(spec.user_cat_cards),
            spec.user_n_numeric, len(icards), spec.item_n_numeric,
        )
        self.model, self.history = train_two_tower(model, examples, validset, tt)
        self.spec = spec
        window = cfg.popularity_days * DAY if cfg.popularity_days > 0 else None
        self.popularity = PopularitySource.from_events(items, times, n, window)
        self._build_index()
        if cfg.graph_share > 0:
            self.add_source("graph", graph_source(ds, catalog, users, items, times, cfg), cfg.graph_share)
        if cfg.collab_share > 0:
            model = ItemItem(cfg.collab).fit(pos[catalog.user_col].to_numpy(), items, n)
            self.add_source("collab", CollabSource(model), cfg.collab_share)
        return self

    def _valid_set(self, valid: pd.DataFrame, train_pos: pd.DataFrame, label: str, tt: TwoTowerConfig):
        catalog, cfg = self.catalog, self.cfg
        vpos = positives(valid, label)
        vpos = vpos[catalog.items.encode(vpos[catalog.item_col].to_numpy()) < catalog.items.oov]
        if len(vpos) == 0:
            return None
        first = vpos.groupby(catalog.user_col, sort=False).head(1)  # valid is time-sorted
        user_ids = first[catalog.user_col].to_numpy()
        known = catalog.users.encode(user_ids) < catalog.users.oov
        first, user_ids = first[known], user_ids[known]
        if tt.max_valid_users and len(user_ids) > tt.max_valid_users:
            pick = np.sort(np.random.default_rng(tt.seed).choice(len(user_ids), tt.max_valid_users, replace=False))
            first, user_ids = first.iloc[pick], user_ids[pick]
        if len(user_ids) == 0:
            return None
        ctx = {c: first[c].to_numpy() for c in self.encoder.context_cat_names + [s.name for s in
                                                                                  self.encoder.context_num_stats]}
        req = catalog.requests(user_ids, first[catalog.time_col].to_numpy(), train_pos, exclude_seen=cfg.exclude_seen,
                               context=ctx)
        rel = _dedup_rows(catalog.histories(user_ids, vpos), catalog.n_items, req.exclude)
        return ValidSet(self.encoder.encode_requests(req, catalog), rel, req.exclude)

    def _build_index(self) -> None:
        cfg = self.cfg
        with torch.no_grad():
            self.item_vectors = np.ascontiguousarray(self.model.item_embeddings().numpy(), dtype=np.float32)
        self.index = AnnIndex.build(self.item_vectors, cfg.index_factory, cfg.nprobe, cfg.ef_search,
                                    seed=cfg.two_tower.seed, threads=cfg.index_threads)

    # ---------------------------------------------------------------------------------------------------
    def add_source(self, name: str, source: CandidateSource, share: float) -> None:
        """Register an extra candidate source (e.g. graph PPR) merged after ANN, before popularity, with
        ``round(share * k)`` reserved slots of a ``retrieve(.., k)``. A source with ``save(folder)`` and a
        ``load(folder)`` classmethod (the graph source) is saved with the stage; any other must be re-added
        by its owner after :meth:`load`."""
        if name in ("ann", "popularity") or name in self.extra_sources:
            raise ValueError(f"RetrievalStage.add_source: source name {name!r} is taken")
        if not callable(getattr(source, "candidates", None)):
            raise TypeError("RetrievalStage.add_source: source needs a candidates(requests, k) method")
        if not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"RetrievalStage.add_source: share must be in [0, 1], got {share!r}")
        self.extra_sources[name] = (source, float(share))

    def _check_fitted(self) -> None:
        if self.model is None or self.index is None:
            raise RuntimeError("RetrievalStage: call fit() or load() first")

    @torch.no_grad()
    def user_vectors(self, requests: Requests, chunk: int = 4096) -> np.ndarray:
        """(B, D) float32 two-tower user vectors."""
        self._check_fitted()
        self.model.eval()
        out = []
        for s in range(0, len(requests), chunk):
            sub = requests.take(np.arange(s, min(s + chunk, len(requests))))
            out.append(self.model.user_embeddings(*self.encoder.encode_requests(sub, self.catalog).tensors()).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.index.dim), np.float32)

    def is_cold(self, requests: Requests) -> np.ndarray:
        """(B,) bool: OOV user with an empty history (served by popularity only)."""
        return cold_rows(requests, self.catalog.users.oov)

    def _prepare(self, requests: Requests) -> Requests:
        exclude = requests.exclude
        if self.cfg.exclude_seen:
            exclude = union_rows(exclude, requests.history)
        return dataclasses.replace(requests, exclude=exclude)

    def retrieve(self, requests: Requests, k: int, quotas: dict[str, int] | None = None,
                 extra: bool = True) -> Candidates:
        """Up to k merged candidates per request (ANN, extra sources, popularity in that priority).

        Default quotas: popularity round(popularity_share * k), each extra source round(share * k), ANN the
        rest; every source can then fill empty slots in priority order. ``extra=False`` leaves the extra
        sources out (the stage ranking alone: two-tower with popularity fill).
        """
        self._check_fitted()
        if k < 0:
            raise ValueError(f"RetrievalStage.retrieve: k must be >= 0, got {k}")
        req = self._prepare(requests)
        ann = AnnSource(self.index, self.user_vectors, self.is_cold, name="ann")
        outs = {"ann": ann.candidates(req, max(k, self.cfg.ann_k))}
        extra_sources = self.extra_sources if extra else {}
        for name, (src, _) in extra_sources.items():
            checkpoint()  # under a serving deadline: stop here once the stage's budget has passed
            outs[name] = src.candidates(req, k)
        checkpoint()
        outs["popularity"] = self.popularity.candidates(req, k)
        if quotas is None:
            pop_q = int(round(self.cfg.popularity_share * k))
            extra_q = {name: int(round(q * k)) for name, (_, q) in extra_sources.items()}
            quotas = {"ann": max(0, k - pop_q - sum(extra_q.values())), **extra_q, "popularity": pop_q}
        return merge_candidates(outs, quotas, k, exclude=req.exclude)

    def rank(self, requests: Requests, k: int) -> Results:
        """The stage alone as a Ranker: ANN candidates (popularity fill) ordered by the exact two-tower score;
        cold requests get the popular items (score log(1 + count)), flagged "cold_start"."""
        cands = self.retrieve(requests, k, quotas={"ann": k}, extra=False)
        items = cands.items
        b = len(items)
        scores = np.full(items.shape, np.nan, dtype=np.float64)
        cold = self.is_cold(requests)
        warm = np.flatnonzero(~cold)
        if len(warm):
            u = self.user_vectors(requests.take(warm))
            it = items[warm]
            v = self.item_vectors[np.clip(it, 0, None)]  # (b, C, D)
            s = np.einsum("bd,bcd->bc", u, v).astype(np.float64)
            scores[warm] = np.where(it >= 0, s, np.nan)
        if cold.any():
            c = np.flatnonzero(cold)
            it = items[c]
            scores[c] = np.where(it >= 0, np.log1p(self.popularity.counts[np.clip(it, 0, None)]), np.nan)
        order = np.lexsort((np.arange(items.shape[1])[None, :].repeat(b, 0), -np.nan_to_num(scores, nan=-np.inf)),
                           axis=1)
        items = np.take_along_axis(items, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        degraded = [["cold_start"] if c else [] for c in cold]
        return Results(items, scores, stage_scores={"retrieval": scores.copy()}, stages={"retrieval": items.copy()},
                       degraded=degraded)

    # ---------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the stage into ``folder`` (created if needed); see the module docstring for the files."""
        import safetensors.torch

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "config": to_dict(self.cfg),
            "spec": dataclasses.asdict(self.spec),
            "n_users": self.catalog.users.size,
            "n_items": self.catalog.n_items,
            "features": self.encoder.meta(),
            "history": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in h.items()}
                        for h in self.history],  # strict JSON: no NaN
        }
        (folder / "retrieval.json").write_text(json.dumps(meta, indent=2, default=float, allow_nan=False) + "\n",
                                               encoding="utf-8")
        safetensors.torch.save_model(self.model, str(folder / "model.safetensors"))
        self.index.save(folder / "index.faiss")
        np.save(folder / "popularity.npy", self.popularity.counts)
        self.encoder.save(folder)
        saved = {}
        for name, (src, share) in self.extra_sources.items():
            if isinstance(src, GraphSource):
                src.save(folder / "sources" / name)
                saved[name] = {"type": "graph", "share": share}
            elif isinstance(src, CollabSource):
                src.model.save(folder / "sources" / name)
                saved[name] = {"type": "collab", "share": share}
            else:
                logger.warning("retrieval: extra source %r is not saved with the stage (no known format)", name)
        (folder / "sources.json").write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, catalog: Catalog) -> "RetrievalStage":
        """Rebuild a saved stage for ``catalog`` (which must be the catalogue it was trained with)."""
        import safetensors.torch

        folder = Path(folder)
        path = folder / "retrieval.json"
        meta = read_stage_meta(path, "retrieval stage", FORMAT_VERSION)
        if meta["n_items"] != catalog.n_items or meta["n_users"] != catalog.users.size:
            raise ValueError(
                f"{path}: saved for {meta['n_items']} items / {meta['n_users']} user rows, but the catalogue has "
                f"{catalog.n_items} items / {catalog.users.size} user rows"
            )
        self = cls()
        self.cfg = from_dict(RetrievalConfig, meta["config"])
        self.catalog = catalog
        self.spec = TowerSpec.from_dict(meta["spec"])
        self.model = TwoTower.from_spec(self.spec)
        safetensors.torch.load_model(self.model, str(folder / "model.safetensors"))
        self.model.eval()
        self.encoder = FeatureEncoder.load(folder, meta["features"])
        self.history = meta.get("history", [])
        self.index = AnnIndex.load(folder / "index.faiss")
        self.popularity = PopularitySource(np.load(folder / "popularity.npy", allow_pickle=False))
        with torch.no_grad():
            self.item_vectors = np.ascontiguousarray(self.model.item_embeddings().numpy(), dtype=np.float32)
        if self.index.ntotal != catalog.n_items:
            raise ValueError(f"{folder / 'index.faiss'}: {self.index.ntotal} vectors for {catalog.n_items} items")
        sources_path = folder / "sources.json"
        for name, spec in (json.loads(sources_path.read_text(encoding="utf-8")) if sources_path.is_file() else {}).items():
            if spec.get("type") not in ("graph", "collab"):
                raise ValueError(f"{sources_path}: source {name!r} has unknown type {spec.get('type')!r} "
                                 "(expected 'graph' or 'collab')")
            check_name(name, f"{sources_path}: source name")  # joined into a path below: must stay inside
            if spec["type"] == "collab":
                src = CollabSource(ItemItem.load(folder / "sources" / name, catalog.n_items))
            else:
                src = GraphSource.load(folder / "sources" / name)
            if src.n_items != catalog.n_items:
                raise ValueError(f"{folder / 'sources' / name}: source of {src.n_items} items, catalogue {catalog.n_items}")
            self.add_source(name, src, float(spec["share"]))
        return self
