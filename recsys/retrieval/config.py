"""Configuration of the retrieval stage (the ``retrieval`` section of the engine config).

Kept free of heavy imports (no torch, no data modules) and of module-level imports of :mod:`recsys.config`
(``ConfigError`` is imported when a check fails), so :mod:`recsys.config` can import ``RetrievalConfig`` from
here while it is itself being imported, whichever module is imported first. Import it from here, not from
:mod:`recsys.retrieval.stage` (which pulls in torch and the data layer).
"""

from __future__ import annotations

import dataclasses

from recsys.collab import CollabConfig
from recsys.graph.item_graph import GraphConfig
from recsys.graph.pagerank import PPRConfig
from recsys.retrieval.index import parse_factory


def _error(message: str) -> Exception:
    from recsys.configlib import ConfigError

    return ConfigError(message)


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    """Two-tower architecture and training.

    ``logq``: subtract log q_i of each column item (Yi et al. 2019). ``n_uniform_negatives`` M > 0 adds M
    uniformly sampled items per batch as extra negatives (mixed negative sampling, Yang et al. 2020).
    ``input_dropout``: per example, the probability that the user id and, independently, each categorical
    user/context feature is replaced by its OOV code, so the OOV rows learn a "generic" value and the tower
    works for users unseen at training (through their history and features).
    ``weight_decay`` (AdamW) applies to the dense layers and feature tables; the id tables use SparseAdam.
    ``history_encoder``: how the user tower summarises the last ``history_len`` items: ``mean`` pooling, or
    ``attention``, causal self-attention with ``attention_layers`` blocks of ``attention_heads`` heads and the
    most recent position's output (SASRec-like; :class:`recsys.retrieval.two_tower.HistoryAttention`).
    ``eval_k``: early stopping on validation recall@eval_k (exact scoring of all items, seen items excluded);
    training stops after ``patience`` epochs without improvement and keeps the best epoch's weights.
    """

    dim: int = 64
    emb_dim: int = 64
    feature_dim: int = 16
    hidden: tuple[int, ...] = (128,)
    temperature: float = 0.05
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 2
    logq: bool = True
    n_uniform_negatives: int = 0
    history_len: int = 20
    history_encoder: str = "mean"
    attention_layers: int = 2
    attention_heads: int = 2
    input_dropout: float = 0.5
    eval_k: int = 100
    max_valid_users: int = 5000
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        checks = [
            ("dim", self.dim >= 1, ">= 1"),
            ("emb_dim", self.emb_dim >= 1, ">= 1"),
            ("feature_dim", self.feature_dim >= 1, ">= 1"),
            ("hidden", all(h >= 1 for h in self.hidden), "a list of widths >= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 2, ">= 2 (in-batch negatives)"),
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("n_uniform_negatives", self.n_uniform_negatives >= 0, ">= 0"),
            ("history_len", self.history_len >= 0, ">= 0 (0: no history pooling)"),
            ("history_encoder", self.history_encoder in ("mean", "attention"), "'mean' or 'attention'"),
            ("attention_layers", self.attention_layers >= 1, ">= 1"),
            ("attention_heads", self.attention_heads >= 1 and self.emb_dim % self.attention_heads == 0,
             f">= 1 and divide emb_dim ({self.emb_dim})"),
            ("input_dropout", 0.0 <= self.input_dropout < 1.0, "in [0, 1)"),
            ("eval_k", self.eval_k >= 1, ">= 1"),
            ("max_valid_users", self.max_valid_users >= 0, ">= 0 (0: all)"),
            ("threads", self.threads >= 1, ">= 1"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise _error(f"retrieval.two_tower.{name}: must be {what}, got {getattr(self, name)!r}")



@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """The retrieval stage (``retrieval`` section of the engine config).

    index_factory     FAISS index (see :mod:`recsys.retrieval.index`): Flat, HNSW{M}, IVF{n},Flat, IVF{n},PQ{m}
    nprobe, ef_search query-time IVF cells / HNSW beam
    ann_k             candidates fetched from the ANN index per request (0: the k asked of ``retrieve``)
    popularity_share  fraction of the k slots reserved for popular items (the ANN source gets the rest first;
                      either fills what the other leaves empty); cold users get popularity only
    popularity_days   count popularity over the last this many days of the train window (0: all of it)
    exclude_seen      never return items of the request's history (``Requests.exclude`` is always honoured)
    refit             walk-forward: each scoring stage's upstream two-tower is retrained on every window
                      before that stage's window, and the bundle serves one retrained on every window before
                      the held-out one (see :func:`recsys.training.refit_candidates`); off: one two-tower,
                      trained on the first window, serves every stage and the bundle
    graph_share       fraction of the k slots reserved for the graph source (the user's top personalized
                      PageRank items on the item graph of the train window); 0 disables the source
    graph, ppr        the item graph (co-engagement + explicit links) and the PPR computation of that source
    collab_share      fraction of the k slots reserved for the item-item source (EASE or item-kNN top items of
                      the user's history, fitted on the train window; :mod:`recsys.collab`); 0 disables it
    collab            that source's item-item model
    """

    two_tower: TwoTowerConfig = dataclasses.field(default_factory=TwoTowerConfig)
    index_factory: str = "HNSW32"
    nprobe: int = 16
    ef_search: int = 128
    ann_k: int = 0
    popularity_share: float = 0.05
    popularity_days: float = 0.0
    exclude_seen: bool = True
    index_threads: int = 2
    refit: bool = False
    graph_share: float = 0.1
    graph: GraphConfig = dataclasses.field(default_factory=GraphConfig)
    ppr: PPRConfig = dataclasses.field(default_factory=lambda: PPRConfig(eps=1e-4))
    collab_share: float = 0.0
    collab: CollabConfig = dataclasses.field(default_factory=CollabConfig)

    def __post_init__(self) -> None:
        try:
            parse_factory(self.index_factory)
        except (TypeError, ValueError) as exc:
            raise _error(f"retrieval.index_factory: {exc}") from None
        for name, ok, what in (
            ("nprobe", self.nprobe >= 1, ">= 1"),
            ("ef_search", self.ef_search >= 1, ">= 1"),
            ("ann_k", self.ann_k >= 0, ">= 0"),
            ("popularity_share", 0.0 <= self.popularity_share <= 1.0, "in [0, 1]"),
            ("graph_share", 0.0 <= self.graph_share <= 1.0 - self.popularity_share, "in [0, 1 - popularity_share]"),
            ("collab_share", 0.0 <= self.collab_share <= 1.0 - self.popularity_share - self.graph_share,
             "in [0, 1 - popularity_share - graph_share]"),
            ("popularity_days", self.popularity_days >= 0, ">= 0"),
            ("index_threads", self.index_threads >= 1, ">= 1"),
        ):
            if not ok:
                raise _error(f"retrieval.{name}: must be {what}, got {getattr(self, name)!r}")
        if self.collab_share > 0 and self.collab.method == "none":
            raise _error("retrieval.collab.method: 'none' with retrieval.collab_share > 0; set itemknn or ease, or "
                         "collab_share 0")
