"""A fourth scoring stage written the way a user would add one: its own module, one registry line
(:func:`register`), and the config (``engine.funnel`` + ``stage_params``). It goes through training, the
bundle, loading, evaluation and serving in tests/test_contracts.py without any other change to the engine.

The stage re-scores its upstream's candidates as ``score = upstream score + w * log(1 + popularity)``, where
``popularity`` counts each item's engagements in the look-back before its training window and ``w`` is chosen
on that window from ``grid`` (the weight whose top-``eval_k`` recall of the window's engagements is highest;
ties: the smallest weight). Shapes: B requests, C candidates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from recsys.data.catalog import positives
from recsys.engine import top_columns
from recsys.stages.base import FitContext, register_stage


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    grid: tuple[float, ...] = (0.0, 0.25, 1.0, 4.0)
    upstream_score: str = "prerank"  # the Candidates.scores entry it adds to
    eval_k: int = 10

    def __post_init__(self) -> None:
        if not self.grid or self.eval_k < 1:
            raise ValueError(f"toy: grid must be non-empty and eval_k >= 1, got {self.grid}, {self.eval_k}")


class ToyStage:
    name = "toy"

    def __init__(self, cfg: ToyConfig | None = None) -> None:
        self.cfg = cfg
        self.w: float | None = None
        self.log_pop: np.ndarray | None = None

    def fit(self, ctx: FitContext) -> "ToyStage":
        catalog = ctx.catalog
        hist = positives(ctx.history, ctx.ds.schema.positive_label)
        items = catalog.items.encode(hist[catalog.item_col].to_numpy())
        counts = np.bincount(items[items < catalog.n_items], minlength=catalog.n_items)
        self.log_pop = np.log1p(counts.astype(np.float64))
        win = positives(ctx.window_df, ctx.ds.schema.positive_label)
        first = win.drop_duplicates(catalog.user_col)
        req = catalog.requests(first[catalog.user_col].to_numpy(), first[catalog.time_col].to_numpy(),
                               positives(ctx.history, ctx.ds.schema.positive_label))
        cands = ctx.upstream.candidates(req)
        truth = catalog.histories(first[catalog.user_col].to_numpy(), win)
        best = None
        for w in self.cfg.grid:
            self.w = float(w)
            s = self.score(req, cands)["score"]
            top = np.take_along_axis(cands.items, np.clip(top_columns(s, cands.items, self.cfg.eval_k), 0, None), 1)
            hits = sum(len(set(top[b]) & set(truth.row(b))) for b in range(len(req)))
            if best is None or hits > best[0]:
                best = (hits, float(w))
        self.w = best[1]
        return self

    def score(self, requests, candidates) -> dict[str, np.ndarray]:
        items = np.asarray(candidates.items)
        base = np.asarray(candidates.scores.get(self.cfg.upstream_score, np.zeros(items.shape)), dtype=np.float64)
        valid = (items >= 0) & np.isfinite(base)
        out = np.full(items.shape, -np.inf)
        out[valid] = base[valid] + self.w * self.log_pop[items[valid]]
        return {"score": out}

    def save(self, folder) -> None:
        folder = Path(folder)
        np.save(folder / "log_pop.npy", self.log_pop, allow_pickle=False)
        (folder / "toy.json").write_text(json.dumps({"w": self.w, "config": dataclasses.asdict(self.cfg)}))

    @classmethod
    def load(cls, folder, catalog) -> "ToyStage":
        folder = Path(folder)
        meta = json.loads((folder / "toy.json").read_text())
        cfg = meta["config"]
        self = cls(ToyConfig(tuple(cfg["grid"]), cfg["upstream_score"], cfg["eval_k"]))
        self.w, self.log_pop = float(meta["w"]), np.load(folder / "log_pop.npy", allow_pickle=False)
        return self


def register() -> None:
    register_stage("toy", "toy_stage:ToyStage", config="toy_stage:ToyConfig")  # the one registry line
