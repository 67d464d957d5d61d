"""Retrieval stage: two-tower model, FAISS index, candidate sources and their merge.

Submodules: :mod:`~recsys.retrieval.config` (RetrievalConfig, TwoTowerConfig; light, imported by
:mod:`recsys.config`), :mod:`~recsys.retrieval.two_tower` (torch model and loss), :mod:`~recsys.retrieval.train`,
:mod:`~recsys.retrieval.index` (FAISS), :mod:`~recsys.retrieval.sources`, :mod:`~recsys.retrieval.stage`.
Names below are imported lazily, so ``import recsys.retrieval.config`` does not pull in torch or the data layer.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RetrievalConfig": "config", "TwoTowerConfig": "config",
    "AnnIndex": "index", "parse_factory": "index",
    "AnnSource": "sources", "Candidates": "sources", "CandidateSource": "sources", "PopularitySource": "sources",
    "merge_candidates": "sources",
    "RetrievalStage": "stage",
    "train_two_tower": "train",
    "ItemTower": "two_tower", "TowerSpec": "two_tower", "TwoTower": "two_tower", "UserTower": "two_tower",
    "sampled_softmax_loss": "two_tower",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"recsys.retrieval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'recsys.retrieval' has no attribute {name!r}")
