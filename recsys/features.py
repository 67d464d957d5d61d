"""The feature registry and the one vectorized (request, candidate) feature assembly.

Shapes: B requests, C candidates per request, F features, N items, U catalogue users, H history entries.

:func:`assemble` is the only code that turns ``(Requests, Candidates)`` into model inputs; the pre-ranker's
training, the offline evaluation (through the engine) and the HTTP service all call it, so a feature can never
be computed one way in training and another in serving::

    assemble(requests, cands, ctx, names) -> (B, C, F) float32, NaN = missing

Every value depends only on its own request row (and the fitted :class:`FeatureContext`), so a user's features
are bit-identical whether the user is scored alone or in a batch (tested). Padding candidates (item ``-1`` or
outside the catalogue) get NaN in every column.

**Missing values** are NaN, passed as is to LightGBM, which learns for each split which side missing values
go to (``use_missing``; Ke et al. 2017, "LightGBM", NeurIPS; the LightGBM docs, "Missing Value Handle").
Each feature's description says when it is NaN. A quantity that is truly zero (no history, no co-engagement)
is 0, not NaN.

**The context** (:class:`FeatureContext`) is fitted once on the training window (the window the retrieval stage
trained on; never on the window the pre-ranker learns from, so no label leaks into a feature) and saved as
``.npy`` / ``.json`` (plus the users-table id vocabulary as a one-column Parquet file; no pickle). It holds
item popularity, CTR, creation time and category, the item graph (co-engagement + explicit links,
:mod:`recsys.graph`) with its global PageRank, the item-item model of ``collab_score`` (item-kNN or EASE,
:mod:`recsys.collab`), per-user activity counts and the users/items/context columns' encodings. Popularity, the
graph and the item-item model are as of the end of that window, also at serving time.

**Registry.** :data:`REGISTRY` maps each fixed feature name to a :class:`Feature` (name, description, kind,
function). Dataset columns give three families whose names depend on the dataset schema, resolved against
the fitted context (:func:`available_features`, :func:`resolve`):

* ``ctx.<column>``  request context columns (``Role.CONTEXT``, e.g. hour, device) from ``Requests.context``
* ``user.<column>`` users-table CATEGORICAL / NUMERIC columns (users known to the catalogue through their
  catalogue index, other users through ``Requests.user_ids``)
* ``item.<column>`` items-table CATEGORICAL / NUMERIC columns other than the category and creation time

Numeric columns pass their value; categorical (non-numeric) ones their code in the levels seen at fitting
(kind ``categorical``: LightGBM ``categorical_feature``). Unknown level, missing value, column absent from the
request, unknown user: NaN.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.collab import CollabConfig, ItemItem, gather_csr as _gather_csr, pair_lookup as _pair_lookup
from recsys.configlib import ConfigError, from_dict, to_dict
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset, Role
from recsys.data.vocab import Vocab
from recsys.deadline import checkpoint
from recsys.graph import GraphConfig, Transition, build_item_graph, load_graph, pagerank, save_graph
from recsys.graph import personalized_pagerank
from recsys.io import write_json
from recsys.types import MISSING_TIME, Ragged, Requests

if TYPE_CHECKING:  # not imported at run time: importing recsys.retrieval loads torch and faiss
    from recsys.retrieval.sources import Candidates

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DAY = 86_400
CONTEXT_JSON = "feature_context.json"
POP_WINDOWS: tuple[tuple[str, float | None], ...] = (("pop_1d", 1.0), ("pop_7d", 7.0), ("pop_all", None))
SOURCES = ("ann", "popularity", "graph", "collab")  # candidate sources with a 0/1 column (src_<name>)
#: features that carry an upstream *scoring stage*'s output: a stage must not use its own (the pre-ranker's
#: default features leave these out; the heavy ranker's include them)
STAGE_SCORE_FEATURES = ("prerank_score",)
#: features whose value depends on the retrieval having returned the item: which source did (``src_*``, exactly
#: one of them 1 at serving), how many did (``n_sources`` >= 1), and the ANN score and rank, which serving has
#: only for the ANN source's own list (NaN for any other item). An item no source returned (an impression
#: appended as a training negative) would get values for them that never occur at serving: all ``src_*`` 0,
#: an ANN score below the ANN list's cut; a model learns "no source flag => negative" from them.
CANDIDATE_SOURCE_FEATURES = ("ann_score", "ann_rank", *(f"src_{s}" for s in SOURCES), "n_sources")
FAMILIES = ("ctx.", "user.", "item.")


class FeatureKind(str, enum.Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"  # non-negative integer codes; LightGBM categorical_feature


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the features (saved with the context).

    co_last_n     co-engagement: the user's last n history items (see :func:`recsys.graph.co_engagement`)
    ppr_last_n    personalized PageRank restart set: the user's last n history items (uniform weights)
    ppr_damping   PageRank damping alpha (probability of following an edge)
    ppr_eps       forward-push threshold of the PPR feature (smaller: more exact, slower); PPR values below
                  ~eps are 0 (see :func:`recsys.graph.personalized_pagerank`, method ``push``)
    pagerank_tol  convergence tolerance of the global PageRank (L1 change < N * tol)
    ctr_prior     smoothing of the item CTR: (clicks + prior * global_ctr) / (impressions + prior)
    category_col  the items-table column giving an item's category (absent: the category features are NaN)
    created_col   the items-table column giving an item's creation time in Unix seconds (absent: age is NaN)
    collab        the item-item model of the ``collab_score`` feature (:mod:`recsys.collab`; ``method: none``:
                  no model is fitted and the feature is not offered)
    """

    co_last_n: int = 10
    ppr_last_n: int = 20
    ppr_damping: float = 0.85
    ppr_eps: float = 1e-4
    pagerank_tol: float = 1e-10
    ctr_prior: float = 20.0
    category_col: str = "category"
    created_col: str = "created_at"
    collab: CollabConfig = dataclasses.field(default_factory=CollabConfig)

    def __post_init__(self) -> None:
        for name, ok, what in (
            ("co_last_n", self.co_last_n >= 1, ">= 1"),
            ("ppr_last_n", self.ppr_last_n >= 1, ">= 1"),
            ("ppr_damping", 0.0 <= self.ppr_damping < 1.0, "in [0, 1)"),
            ("ppr_eps", self.ppr_eps > 0, "> 0"),
            ("pagerank_tol", self.pagerank_tol > 0, "> 0"),
            ("ctr_prior", self.ctr_prior >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"feature_params.{name}: must be {what}, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class ColumnEncoding:
    """How one dataset column becomes a feature: its value (numeric) or its code in ``levels`` (categorical;
    levels are the ``str`` of the values seen at fitting, sorted)."""

    name: str
    kind: FeatureKind
    levels: tuple[str, ...] = ()
    _codes: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._codes.update({level: float(j) for j, level in enumerate(self.levels)})

    def encode(self, values) -> np.ndarray:
        """(R,) values -> (R,) float32; NaN for missing values and unknown levels. Element-wise (one dict look-up
        of ``str(value)`` per value), so a value's code never depends on the other values."""
        vals = np.asarray(values)
        if self.kind is FeatureKind.NUMERIC:
            if vals.dtype.kind in "biuf":
                return vals.astype(np.float32)
            return pd.to_numeric(pd.Series(vals, dtype=object), errors="coerce").to_numpy(np.float32)
        codes, nan = self._codes, float("nan")
        return np.array([nan if _missing(v) else codes.get(str(v), nan) for v in vals.ravel().tolist()],
                        dtype=np.float32)

    @classmethod
    def fit(cls, name: str, values: pd.Series) -> "ColumnEncoding":
        numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
        if numeric:
            return cls(name, FeatureKind.NUMERIC)
        levels = sorted({str(v) for v in pd.Series(values).dropna().unique()})
        return cls(name, FeatureKind.CATEGORICAL, tuple(levels))


# ------------------------------------------------------------------------------------------------------------
# The fitted context
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FeatureContext:
    """Everything the features know beyond the request and its candidates, fitted on the training window.

    pop            (3, N) float32 log1p(engagements) in the last 1 day, last 7 days and all of the window
    ctr            (N,) float32 smoothed click-through rate (NaN for all items when the data has no impressions)
    created_at     (N,) float64 creation time (Unix s), NaN when unknown
    category       (N,) int64 category code, -1 when unknown; ``n_categories`` codes in all
    graph          (N, N) csr float32 item graph; ``transition`` its random walk; ``pagerank`` (N,) float64
    user_events    (U,) float32 interaction rows (impressions included) of each catalogue user in the window
    user_table     (T + 1, Fu) float32 users-table features; row T: unknown user (NaN); ``user_index`` maps
                   external user ids to rows
    item_table     (N, Fi) float32 items-table features (NaN when unknown)
    collab         the fitted item-item model (:class:`recsys.collab.ItemItem`), None with ``collab.method: none``
    """

    catalog: Catalog
    params: FeatureConfig
    graph_cfg: GraphConfig
    pop: np.ndarray
    ctr: np.ndarray
    created_at: np.ndarray
    category: np.ndarray
    n_categories: int
    graph: sp.csr_matrix
    pagerank: np.ndarray
    user_events: np.ndarray
    user_index: Vocab | None
    user_table: np.ndarray
    user_columns: tuple[ColumnEncoding, ...]
    item_table: np.ndarray
    item_columns: tuple[ColumnEncoding, ...]
    context_columns: tuple[ColumnEncoding, ...]
    window: tuple[int, int]  # (first, last) event time of the fitting window
    transition: Transition | None = None
    collab: ItemItem | None = None

    def __post_init__(self) -> None:
        if self.transition is None:
            self.transition = Transition.from_adjacency(self.graph)
        # (U + 1,) users-table row of each catalogue user, last entry: the OOV user (derived, not saved)
        unknown = len(self.user_table) - 1
        rows = (np.full(len(self.catalog.users), unknown, dtype=np.int64) if self.user_index is None
                else self.user_index.encode(self.catalog.users.ids))
        self.catalog_user_rows = np.r_[rows, unknown].astype(np.int64)

    @property
    def n_items(self) -> int:
        return self.pop.shape[1]

    # ---------------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        ds: Dataset,
        catalog: Catalog,
        train_df: pd.DataFrame,
        graph_cfg: GraphConfig = GraphConfig(),
        params: FeatureConfig = FeatureConfig(),
    ) -> "FeatureContext":
        """Fit on ``train_df`` (the training window's interaction rows, impressions included).

        Engagements are the rows with ``ds.schema.positive_label`` > 0. Popularity windows end at the window's
        last event. The item graph is built from the engagements and the dataset's item links (links to items
        outside the catalogue are dropped).
        """
        if not isinstance(graph_cfg, GraphConfig):
            raise TypeError(f"FeatureContext.fit: graph_cfg must be a GraphConfig, got {type(graph_cfg).__name__}")
        if not isinstance(params, FeatureConfig):
            raise TypeError(f"FeatureContext.fit: params must be a FeatureConfig, got {type(params).__name__}")
        label = ds.schema.positive_label
        for c in (catalog.user_col, catalog.item_col, catalog.time_col, label):
            if c not in train_df.columns:
                raise ValueError(f"FeatureContext.fit: train_df has no column {c!r}; columns: {list(train_df.columns)}")
        if len(train_df) == 0:
            raise ValueError("FeatureContext.fit: train_df is empty")
        n = catalog.n_items
        all_u, all_i, all_t = catalog.encode(train_df)
        is_pos = train_df[label].to_numpy() > 0
        pu, pi, pt = all_u[is_pos], all_i[is_pos], all_t[is_pos]
        t_end = int(all_t.max())
        ok = pi < n
        pop = np.zeros((len(POP_WINDOWS), n), dtype=np.float32)
        for j, (_, days) in enumerate(POP_WINDOWS):
            keep = ok if days is None else ok & (pt > t_end - days * DAY)
            pop[j] = np.log1p(np.bincount(pi[keep], minlength=n)[:n]).astype(np.float32)

        ctr = np.full(n, np.nan, dtype=np.float32)
        if ds.schema.has_impressions:
            okall = all_i < n
            shown = np.bincount(all_i[okall], minlength=n)[:n].astype(np.float64)
            clicks = np.bincount(pi[ok], minlength=n)[:n].astype(np.float64)
            prior_rate = clicks.sum() / max(shown.sum(), 1.0)
            ctr = ((clicks + params.ctr_prior * prior_rate) / np.maximum(shown + params.ctr_prior, 1e-12))
            ctr = ctr.astype(np.float32)

        created = np.full(n, np.nan, dtype=np.float64)
        category = np.full(n, -1, dtype=np.int64)
        n_categories = 0
        item_cols: list[ColumnEncoding] = []
        item_table = np.zeros((n, 0), dtype=np.float32)
        if ds.items is not None and "items" in ds.schema.tables:
            spec = ds.schema.tables["items"]
            items = ds.items
            idx = catalog.items.encode(items[spec.names(Role.ITEM_ID)[0]].to_numpy())
            iok = idx < n
            if params.created_col in items.columns and params.created_col in spec.columns:
                vals = pd.to_numeric(items[params.created_col], errors="coerce").to_numpy(np.float64)
                created[idx[iok]] = vals[iok]
            if params.category_col in items.columns and params.category_col in spec.columns:
                codes, uniques = pd.factorize(items[params.category_col])
                category[idx[iok]] = codes[iok]  # factorize gives -1 for missing values
                n_categories = len(uniques)
            cols = []
            for c in spec.names(Role.CATEGORICAL) + spec.names(Role.NUMERIC):
                if c in (params.category_col, params.created_col):
                    continue
                enc = ColumnEncoding.fit(c, items[c])
                col = np.full(n, np.nan, dtype=np.float32)
                col[idx[iok]] = enc.encode(items[c].to_numpy())[iok]
                item_cols.append(enc)
                cols.append(col)
            if cols:
                item_table = np.stack(cols, axis=1)

        links_src = links_dst = None
        if ds.item_links is not None and "item_links" in ds.schema.tables:
            lspec = ds.schema.tables["item_links"]
            s = catalog.items.encode(ds.item_links[lspec.names(Role.SRC)[0]].to_numpy())
            d = catalog.items.encode(ds.item_links[lspec.names(Role.DST)[0]].to_numpy())
            lok = (s < n) & (d < n)
            links_src, links_dst = s[lok], d[lok]
        graph = build_item_graph(pu, pi, pt, n, graph_cfg, links_src, links_dst)
        transition = Transition.from_adjacency(graph)
        pr = pagerank(transition, damping=params.ppr_damping, tol=params.pagerank_tol, max_iter=1000)

        collab = None  # fitted on every engaging user's rows (raw ids: users outside the catalogue count too)
        if params.collab.method != "none":
            collab = ItemItem(params.collab).fit(train_df[catalog.user_col].to_numpy()[is_pos][ok], pi[ok], n)

        uok = all_u < catalog.users.oov
        user_events = np.bincount(all_u[uok], minlength=len(catalog.users))[: len(catalog.users)].astype(np.float32)

        user_index = None
        user_cols: list[ColumnEncoding] = []
        user_table = np.zeros((1, 0), dtype=np.float32)
        if ds.users is not None and "users" in ds.schema.tables:
            uspec = ds.schema.tables["users"]
            users = ds.users
            user_index = Vocab(users[uspec.names(Role.USER_ID)[0]].to_numpy())
            cols = []
            for c in uspec.names(Role.CATEGORICAL) + uspec.names(Role.NUMERIC):
                enc = ColumnEncoding.fit(c, users[c])
                user_cols.append(enc)
                cols.append(np.r_[enc.encode(users[c].to_numpy()), np.float32(np.nan)].astype(np.float32))
            user_table = np.stack(cols, axis=1) if cols else np.zeros((len(users) + 1, 0), dtype=np.float32)

        ctx_cols = tuple(
            ColumnEncoding.fit(c, train_df[c]) for c in ds.schema.context_columns if c in train_df.columns
        )
        self = cls(
            catalog=catalog, params=params, graph_cfg=graph_cfg, pop=pop, ctr=ctr, created_at=created,
            category=category, n_categories=n_categories, graph=graph, pagerank=pr, user_events=user_events,
            user_index=user_index, user_table=user_table, user_columns=tuple(user_cols), item_table=item_table,
            item_columns=tuple(item_cols), context_columns=ctx_cols, window=(int(all_t.min()), t_end),
            transition=transition, collab=collab,
        )
        logger.info(
            "feature context: %d items, %d users, %d engagements, graph %d edges, %d categories, features: %s",
            n, len(catalog.users), int(is_pos.sum()), graph.nnz, n_categories, ", ".join(available_features(self)),
        )
        return self

    # ---------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the context into ``folder`` (created): ``feature_context.json`` and ``.npy`` arrays."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "pop": self.pop, "ctr": self.ctr, "created_at": self.created_at, "category": self.category,
            "pagerank": self.pagerank, "user_events": self.user_events, "user_table": self.user_table,
            "item_table": self.item_table,
        }
        for name, arr in arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        save_graph(folder / "item_graph", self.graph)
        if self.collab is not None:
            self.collab.save(folder / "collab")
        if self.user_index is not None:
            self.user_index.save(folder / "user_table_ids.parquet")
        meta = {
            "format_version": FORMAT_VERSION,
            "params": to_dict(self.params),
            "graph": to_dict(self.graph_cfg),
            "n_items": self.n_items,
            "n_users": len(self.catalog.users),
            "n_categories": self.n_categories,
            "window": list(self.window),
            "has_user_table": self.user_index is not None,
            "user_columns": [_enc_to_json(e) for e in self.user_columns],
            "item_columns": [_enc_to_json(e) for e in self.item_columns],
            "context_columns": [_enc_to_json(e) for e in self.context_columns],
        }
        write_json(folder / CONTEXT_JSON, meta)

    @classmethod
    def load(cls, folder: str | Path, catalog: Catalog) -> "FeatureContext":
        """Read a context written by :meth:`save` for ``catalog`` (the catalogue it was fitted with)."""
        folder = Path(folder)
        path = folder / CONTEXT_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; not a saved feature context")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
        if meta["n_items"] != catalog.n_items or meta["n_users"] != len(catalog.users):
            raise ValueError(
                f"{path}: fitted for {meta['n_items']} items / {meta['n_users']} users, but the catalogue has "
                f"{catalog.n_items} items / {len(catalog.users)} users"
            )
        arr = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in (
            "pop", "ctr", "created_at", "category", "pagerank", "user_events", "user_table", "item_table")}
        n = catalog.n_items
        for name, shape in (("pop", (len(POP_WINDOWS), n)), ("ctr", (n,)), ("created_at", (n,)), ("category", (n,)),
                            ("pagerank", (n,)), ("user_events", (len(catalog.users),))):
            if arr[name].shape != shape:
                raise ValueError(f"{folder / (name + '.npy')}: expected shape {shape}, got {arr[name].shape}")
        graph = load_graph(folder / "item_graph")
        if graph.shape != (n, n):
            raise ValueError(f"{folder / 'item_graph'}: graph shape {graph.shape} is not ({n}, {n})")
        user_index = Vocab.load(folder / "user_table_ids.parquet") if meta["has_user_table"] else None
        params = from_dict(FeatureConfig, meta["params"], prefix=f"{path}: params")
        collab = None
        if params.collab.method != "none":
            if not (folder / "collab" / "collab.json").is_file():
                raise FileNotFoundError(f"{folder / 'collab' / 'collab.json'}: missing; params.collab.method is "
                                        f"{params.collab.method!r} (a context saved before collab features?)")
            collab = ItemItem.load(folder / "collab", n)
        return cls(
            catalog=catalog,
            params=params, collab=collab,
            graph_cfg=from_dict(GraphConfig, meta["graph"], prefix=f"{path}: graph"),
            pop=arr["pop"], ctr=arr["ctr"], created_at=arr["created_at"], category=arr["category"],
            n_categories=int(meta["n_categories"]), graph=graph, pagerank=arr["pagerank"],
            user_events=arr["user_events"], user_index=user_index, user_table=arr["user_table"],
            user_columns=tuple(_enc_from_json(e) for e in meta["user_columns"]), item_table=arr["item_table"],
            item_columns=tuple(_enc_from_json(e) for e in meta["item_columns"]),
            context_columns=tuple(_enc_from_json(e) for e in meta["context_columns"]),
            window=tuple(int(t) for t in meta["window"]),
        )


def _missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def _enc_to_json(e: ColumnEncoding) -> dict:
    return {"name": e.name, "kind": e.kind.value, "levels": list(e.levels)}


def _enc_from_json(d: dict) -> ColumnEncoding:
    return ColumnEncoding(str(d["name"]), FeatureKind(d["kind"]), tuple(str(v) for v in d.get("levels", ())))


# ------------------------------------------------------------------------------------------------------------
# The batch the feature functions read
# ------------------------------------------------------------------------------------------------------------


class FeatureInputs:
    """One batch: the requests (B), their candidates (B, C) and the context, with shared intermediate arrays.

    items (B, C) int64 candidate items; ``valid`` (B, C) bool, a catalogue item; ``safe`` (B, C) the item or 0
    at padding (for gathers; padding is overwritten with NaN by :func:`assemble`).
    """

    def __init__(self, requests: Requests, cands: Candidates, ctx: FeatureContext) -> None:
        self.requests = requests
        self.cands = cands
        self.ctx = ctx
        self.items = np.asarray(cands.items)
        self.valid = (self.items >= 0) & (self.items < ctx.n_items)
        self.safe = np.where(self.valid, self.items, 0)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.items.shape

    def cached(self, key: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def per_request(self, v: np.ndarray) -> np.ndarray:
        """(B,) -> (B, C) broadcast."""
        return np.broadcast_to(np.asarray(v, dtype=np.float32)[:, None], self.shape)

    def history_known(self) -> Ragged:
        """Each request's history restricted to catalogue items, oldest first."""

        def build() -> Ragged:
            h = self.requests.history
            ok = (h.values >= 0) & (h.values < self.ctx.n_items)
            if ok.all():
                return h
            rows = np.repeat(np.arange(len(h), dtype=np.int64), h.lengths())[ok]
            indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=len(h)))]
            return Ragged(indptr, h.values[ok], None if h.times is None else h.times[ok])

        return self.cached("history_known", build)


@dataclasses.dataclass(frozen=True)
class Feature:
    """A named feature: ``fn(inputs) -> (B, C)`` array (any float dtype; NaN = missing)."""

    name: str
    description: str
    kind: FeatureKind
    fn: Callable[[FeatureInputs], np.ndarray]


# ------------------------------------------------------------------------------------------------------------
# Feature functions
# ------------------------------------------------------------------------------------------------------------


def _nan(x: FeatureInputs) -> np.ndarray:
    return np.full(x.shape, np.nan, dtype=np.float32)


def _ann_score(x: FeatureInputs) -> np.ndarray:
    s = x.cands.scores.get("ann")
    return _nan(x) if s is None else np.asarray(s, dtype=np.float32)


def _prerank_score(x: FeatureInputs) -> np.ndarray:
    s = x.cands.scores.get("prerank")
    return _nan(x) if s is None else np.asarray(s, dtype=np.float32)


def _ann_rank(x: FeatureInputs) -> np.ndarray:
    """0-based rank of the candidate's ANN score among its request's candidates with an ANN score (higher score
    first, ties by column position); NaN without an ANN score."""
    s = _ann_score(x)
    missing = np.isnan(s) | ~x.valid
    key = np.where(missing, np.inf, -s.astype(np.float64))
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty(x.shape, dtype=np.float32)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(x.shape[1], dtype=np.float32), x.shape), axis=1)
    rank[missing] = np.nan
    return rank


def _source(name: str) -> Callable[[FeatureInputs], np.ndarray]:
    def fn(x: FeatureInputs) -> np.ndarray:
        if name not in x.cands.names:
            return np.zeros(x.shape, dtype=np.float32)
        return (np.asarray(x.cands.source) == x.cands.names.index(name)).astype(np.float32)

    return fn


def _n_sources(x: FeatureInputs) -> np.ndarray:
    out = np.zeros(x.shape, dtype=np.float32)
    for name in x.cands.names:  # sources only: a stage's scores added to Candidates.scores do not count
        v = x.cands.scores.get(name)
        if v is not None:
            out += ~np.isnan(np.asarray(v, dtype=np.float32))
    return out


def _pop(j: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: x.ctx.pop[j][x.safe]


def _ctr(x: FeatureInputs) -> np.ndarray:
    return x.ctx.ctr[x.safe]


def _item_age(x: FeatureInputs) -> np.ndarray:
    ts = x.requests.timestamps.astype(np.float64)
    return ((ts[:, None] - x.ctx.created_at[x.safe]) / DAY).astype(np.float32)


def _item_pagerank(x: FeatureInputs) -> np.ndarray:
    return (x.ctx.pagerank[x.safe] * x.ctx.n_items).astype(np.float32)


def _item_category(x: FeatureInputs) -> np.ndarray:
    c = x.ctx.category[x.safe].astype(np.float32)
    c[c < 0] = np.nan
    return c


def _ppr(x: FeatureInputs) -> np.ndarray:
    """N * PPR(candidate) with the user's last ``ppr_last_n`` known history items as the (uniform) restart set,
    by forward push (Andersen, Chung & Lang 2006) to ``ppr_eps``; empty history: the global PageRank."""
    ctx, p = x.ctx, x.ctx.params
    seeds = x.history_known().last(p.ppr_last_n)
    out = np.empty(x.shape, dtype=np.float64)
    warm = np.flatnonzero(seeds.lengths() > 0)
    cold = np.flatnonzero(seeds.lengths() == 0)
    if len(cold):  # the full global PageRank (not its push-thresholded entries)
        out[cold] = ctx.pagerank[x.safe[cold]]
    if len(warm):
        s = seeds.take(warm)
        m = personalized_pagerank(
            ctx.transition, Ragged(s.indptr, s.values), damping=p.ppr_damping, tol=p.pagerank_tol,
            max_iter=1000, method="push", eps=p.ppr_eps, global_pr=ctx.pagerank,
        )
        out[warm] = _gather_csr(m, x.safe[warm])
    return (out * ctx.n_items).astype(np.float32)


def _co_engagement(x: FeatureInputs) -> np.ndarray:
    """``sum_{h in last co_last_n of history[b]} graph[h, c]`` (as :func:`recsys.graph.co_engagement`), by
    gathering the out-edges of the history items and one sorted-key lookup: O(B n M log(B n M)) for M
    neighbours per item, no (B, N) matrix. Contributions to one (request, item) pair are summed in history
    order, so a row's values do not depend on the other rows."""
    g = x.ctx.graph
    n = x.ctx.n_items
    h = x.history_known().last(x.ctx.params.co_last_n)
    starts, ends = g.indptr[h.values], g.indptr[h.values + 1]
    lens = (ends - starts).astype(np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(x.shape, dtype=np.float32)
    idx = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
    rows = np.repeat(np.repeat(np.arange(len(h), dtype=np.int64), h.lengths()), lens)
    keys = rows * n + g.indices[idx]
    order = np.argsort(keys, kind="stable")
    keys, w = keys[order], g.data[idx][order].astype(np.float32)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ukeys, sums = keys[first], np.add.reduceat(w, first)
    return _pair_lookup(ukeys, sums, np.arange(x.shape[0], dtype=np.int64)[:, None] * n + x.safe)


def _collab_score(x: FeatureInputs) -> np.ndarray:
    """``sum_{h in distinct known history[b]} W[h, c]`` of the context's item-item model (one sparse product of
    the batch's binary histories with W, then a row-wise gather); NaN without a model."""
    if x.ctx.collab is None:
        return np.full(x.shape, np.nan, dtype=np.float32)
    return x.ctx.collab.pair_scores(x.history_known(), x.safe)


def _category_affinity(x: FeatureInputs) -> np.ndarray:
    """share[b, c] = |{h in history[b]: cat(h) = cat(c)}| / |{h in history[b]: cat(h) known}|, by a sorted
    (row, category) key count; NaN when the denominator is 0 or the candidate's category is unknown."""
    ctx = x.ctx
    k = max(ctx.n_categories, 1)
    h = x.history_known()
    hc = ctx.category[h.values]
    rows = np.repeat(np.arange(len(h), dtype=np.int64), h.lengths())
    known = hc >= 0
    denom = np.bincount(rows[known], minlength=len(h)).astype(np.float64)
    keys = np.sort(rows[known] * k + hc[known])
    cc = ctx.category[x.safe]
    q = np.arange(x.shape[0], dtype=np.int64)[:, None] * k + np.maximum(cc, 0)
    num = (np.searchsorted(keys, q, side="right") - np.searchsorted(keys, q, side="left")).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = num / denom[:, None]
    share[(cc < 0) | (denom[:, None] == 0)] = np.nan
    return share.astype(np.float32)


def _history_len(x: FeatureInputs) -> np.ndarray:
    return x.per_request(x.requests.history.lengths())


def _recency(x: FeatureInputs) -> np.ndarray:
    h = x.requests.history
    lens = h.lengths()
    out = np.full(len(h), np.nan, dtype=np.float64)
    has = lens > 0
    if h.times is not None and has.any():
        last = h.times[h.indptr[1:][has] - 1]
        known = last != MISSING_TIME  # an event of unknown time: the missing-value path (NaN)
        rows = np.flatnonzero(has)[known]
        out[rows] = (x.requests.timestamps[rows] - last[known]) / DAY
    return x.per_request(out)


def _user_events(x: FeatureInputs) -> np.ndarray:
    ev = x.ctx.user_events
    u = x.requests.users
    known = (u >= 0) & (u < len(ev))
    return x.per_request(np.where(known, ev[np.where(known, u, 0)], 0.0))


REGISTRY: dict[str, Feature] = {
    f.name: f
    for f in [
        Feature("ann_score", "two-tower inner product from the retrieval candidates (Candidates.scores['ann']); "
                "NaN when the ANN source did not return the item (e.g. popularity-only candidates, cold users)",
                FeatureKind.NUMERIC, _ann_score),
        Feature("ann_rank", "0-based rank of ann_score within the request (best first); NaN without ann_score",
                FeatureKind.NUMERIC, _ann_rank),
        Feature("prerank_score", "the pre-ranker's score of the candidate (Candidates.scores['prerank'], which the "
                "engine sets between the stages); NaN without a pre-ranker. Only for stages after it",
                FeatureKind.NUMERIC, _prerank_score),
        *[Feature(f"src_{s}", f"1 if the '{s}' candidate source contributed the item (Candidates.source), else 0",
                  FeatureKind.NUMERIC, _source(s)) for s in SOURCES],
        Feature("n_sources", "number of candidate sources that returned the item (non-NaN Candidates.scores)",
                FeatureKind.NUMERIC, _n_sources),
        *[Feature(name, "log1p(engagements of the item in "
                  + ("all of the" if d is None else f"the last {d:g} day(s) of the")
                  + " training window); 0 if none", FeatureKind.NUMERIC, _pop(j))
          for j, (name, d) in enumerate(POP_WINDOWS)],
        Feature("item_ctr", "smoothed CTR of the item in the training window, (clicks + a * global CTR) / "
                "(impressions + a); NaN when the dataset has no impressions", FeatureKind.NUMERIC, _ctr),
        Feature("item_age_days", "(request time - item creation time) / 86400; NaN when the creation time is unknown",
                FeatureKind.NUMERIC, _item_age),
        Feature("item_pagerank", "N * global PageRank of the item graph (co-engagement + links; 1 = average)",
                FeatureKind.NUMERIC, _item_pagerank),
        Feature("item_category", "category code of the item; NaN when unknown", FeatureKind.CATEGORICAL,
                _item_category),
        Feature("ppr", "N * personalized PageRank of the item, restart set the user's last ppr_last_n history items "
                "(forward push to ppr_eps: values below ~eps are 0); empty history: N * global PageRank",
                FeatureKind.NUMERIC, _ppr),
        Feature("co_engagement", "sum of item-graph edge weights from the user's last co_last_n history items to the "
                "item; 0 without history or edges", FeatureKind.NUMERIC, _co_engagement),
        Feature("collab_score", "item-item collaborative score (EASE or item-kNN, feature_params.collab) of the item "
                "given the user's whole distinct history: sum of the pruned weights W[h, item]; 0 without history "
                "or weights, NaN with collab.method none", FeatureKind.NUMERIC, _collab_score),
        Feature("user_cat_affinity", "share of the user's history (items with a known category) in the item's "
                "category; NaN for an empty history or an item of unknown category", FeatureKind.NUMERIC,
                _category_affinity),
        Feature("user_history_len", "number of engagements in the request's history (0 for a new user)",
                FeatureKind.NUMERIC, _history_len),
        Feature("user_recency_days", "(request time - time of the user's last history engagement) / 86400; NaN "
                "for an empty history, a history without times or a last engagement of unknown time",
                FeatureKind.NUMERIC, _recency),
        Feature("user_train_events", "interaction rows (impressions included) of the user in the training window; "
                "0 for users unknown to the catalogue", FeatureKind.NUMERIC, _user_events),
    ]
}


# ------------------------------------------------------------------------------------------------------------
# Dataset-column families
# ------------------------------------------------------------------------------------------------------------


def _context_feature(j: int, enc: ColumnEncoding) -> Feature:
    def fn(x: FeatureInputs) -> np.ndarray:
        vals = x.requests.context.get(enc.name)
        if vals is None:
            return _nan(x)
        return x.per_request(enc.encode(vals))

    return Feature(f"ctx.{enc.name}", f"request context column {enc.name!r} ({enc.kind.value}); NaN when the "
                   "request does not carry it, the value is missing or the level is unknown", enc.kind, fn)


def _user_feature(j: int, enc: ColumnEncoding) -> Feature:
    def fn(x: FeatureInputs) -> np.ndarray:
        return x.per_request(x.ctx.user_table[_user_rows(x), j])

    return Feature(f"user.{enc.name}", f"users-table column {enc.name!r} ({enc.kind.value}); NaN for a user "
                   "missing from the users table, a missing value or an unknown level", enc.kind, fn)


def _user_rows(x: FeatureInputs) -> np.ndarray:
    """(B,) row of each request's user in ``ctx.user_table`` (last row: unknown): through the catalogue for users
    it knows (``Requests.users``), by external id (``Requests.user_ids``) for the others."""

    def build() -> np.ndarray:
        ctx, req = x.ctx, x.requests
        known = (req.users >= 0) & (req.users < len(ctx.catalog.users))
        rows = ctx.catalog_user_rows[np.where(known, req.users, len(ctx.catalog.users))]
        if ctx.user_index is not None and req.user_ids is not None and not known.all():
            new = np.flatnonzero(~known)  # users unknown to the catalogue may still be in the users table
            rows[new] = ctx.user_index.encode(np.asarray(req.user_ids)[new])
        return rows

    return x.cached("user_rows", build)


def _item_feature(j: int, enc: ColumnEncoding) -> Feature:
    return Feature(f"item.{enc.name}", f"items-table column {enc.name!r} ({enc.kind.value}); NaN when missing or "
                   "the level is unknown", enc.kind, lambda x: x.ctx.item_table[x.safe, j])


def _family_features(ctx: FeatureContext) -> dict[str, Feature]:
    out: dict[str, Feature] = {}
    for j, e in enumerate(ctx.context_columns):
        out[f"ctx.{e.name}"] = _context_feature(j, e)
    for j, e in enumerate(ctx.user_columns):
        out[f"user.{e.name}"] = _user_feature(j, e)
    for j, e in enumerate(ctx.item_columns):
        out[f"item.{e.name}"] = _item_feature(j, e)
    return out


#: registry features a context may lack the model for: (name, predicate on the context)
_NEEDS = {"collab_score": lambda ctx: ctx.collab is not None}


def available_features(ctx: FeatureContext) -> list[str]:
    """Every feature name :func:`assemble` can compute with ``ctx``: the registry (without ``collab_score``
    when the context has no item-item model), then the column families."""
    return [n for n in REGISTRY if n not in _NEEDS or _NEEDS[n](ctx)] + list(_family_features(ctx))


def resolve(names: Sequence[str], ctx: FeatureContext) -> list[Feature]:
    """The :class:`Feature` of each name; unknown names raise ValueError listing the available ones."""
    fam = _family_features(ctx)
    out, unknown = [], []
    for name in names:
        f = REGISTRY.get(name) or fam.get(name)
        if f is None:
            unknown.append(name)
        else:
            out.append(f)
    if unknown:
        raise ValueError(
            f"unknown feature name(s) {unknown}; available: {', '.join(list(REGISTRY) + list(fam))} "
            f"(families {', '.join(p + '<column>' for p in FAMILIES)} depend on the dataset's columns)"
        )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f"duplicate feature name(s) {dup}")
    return out


def feature_kinds(names: Sequence[str], ctx: FeatureContext) -> list[FeatureKind]:
    return [f.kind for f in resolve(names, ctx)]


def describe(ctx: FeatureContext | None = None) -> str:
    """A Markdown table of the features (the registry; with ``ctx`` also the dataset-column families)."""
    feats = dict(REGISTRY)
    if ctx is not None:
        feats.update(_family_features(ctx))
    lines = ["| feature | kind | description |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {f.kind.value} | {f.description} |" for f in feats.values()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Assembly
# ------------------------------------------------------------------------------------------------------------


def assemble(
    requests: Requests, cands: Candidates, ctx: FeatureContext, names: Sequence[str] | None = None
) -> np.ndarray:
    """(B, C, F) float32 features of each request's candidates, F = len(names) in the given order
    (default: :func:`available_features`). NaN = missing; padding candidates are NaN in every column.

    One vectorized pass per feature over the whole batch (gathers of per-item arrays, sorted-key lookups,
    one sparse product for co-engagement); only the PPR feature loops, once per request (forward push).
    """
    if len(requests) != len(cands):
        raise ValueError(f"assemble: {len(requests)} requests but {len(cands)} candidate rows")
    names = available_features(ctx) if names is None else list(names)
    feats = resolve(names, ctx)
    x = FeatureInputs(requests, cands, ctx)
    b, c = x.shape
    out = np.empty((b, c, len(feats)), dtype=np.float32)
    if b == 0 or c == 0:
        return out
    for j, f in enumerate(feats):
        checkpoint()  # under a serving deadline: stop here once the stage's budget has passed
        out[:, :, j] = f.fn(x)
    out[~x.valid] = np.nan
    return out


__all__ = [
    "CANDIDATE_SOURCE_FEATURES", "ColumnEncoding", "Feature", "FeatureConfig", "FeatureContext", "FeatureInputs",
    "FeatureKind", "REGISTRY", "STAGE_SCORE_FEATURES", "assemble", "available_features", "describe", "feature_kinds",
    "resolve",
]
