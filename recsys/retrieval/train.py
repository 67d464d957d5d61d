"""Training loop of the two-tower model: in-batch sampled softmax with logQ correction, early stopping on
validation recall@k with exact full-catalogue scoring.

Shapes: E training examples (positive interactions), B batch, L history length, N items, V validation users,
F categorical user/context columns, Fn numeric user/context columns.

A training example is one positive interaction (user, item, time) of the train window; its history is the
same user's previous positives strictly before that time (the last L of them), its features are the user's
features and the event's context. Examples are stored sorted by (user, time) so the history of example e is
the contiguous slice ``items[hist_start[e]:hist_end[e]]`` (built vectorized, see :meth:`TrainExamples.build`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from recsys.retrieval.config import TwoTowerConfig
from recsys.retrieval.two_tower import TwoTower, item_log_q, mixed_log_q, sampled_softmax_loss
from recsys.types import Ragged

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class UserInputs:
    """User-tower inputs for B rows: users (B,) int64, history (B, L) int64 padded with N, cat (B, F) int64,
    num (B, Fn) float32."""

    users: np.ndarray
    history: np.ndarray
    cat: np.ndarray
    num: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> "UserInputs":
        return UserInputs(self.users[rows], self.history[rows], self.cat[rows], self.num[rows])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(np.ascontiguousarray(self.users, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(self.history, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(self.cat, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(self.num, dtype=np.float32)),
        )


def pad_history(hist: Ragged, length: int, pad: int) -> np.ndarray:
    """(B, L) int64: each row's last ``length`` items (oldest first), right-aligned, padded with ``pad``."""
    b = len(hist)
    if length == 0:
        return np.full((b, 1), pad, dtype=np.int64)
    ends = hist.indptr[1:]
    starts = hist.indptr[:-1]
    idx = ends[:, None] - length + np.arange(length)[None, :]
    valid = idx >= starts[:, None]
    vals = hist.values[np.clip(idx, 0, max(len(hist.values) - 1, 0))] if len(hist.values) else np.zeros_like(idx)
    return np.where(valid, vals, pad).astype(np.int64)


@dataclasses.dataclass
class TrainExamples:
    """E positive training events sorted by (user, time); see the module docstring."""

    users: np.ndarray  # (E,) int64 catalogue user index
    items: np.ndarray  # (E,) int64 catalogue item index
    hist_start: np.ndarray  # (E,) history of e = items[hist_start[e]:hist_end[e]]
    hist_end: np.ndarray
    cat: np.ndarray  # (E, F) int64
    num: np.ndarray  # (E, Fn) float32
    n_items: int
    history_len: int

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def build(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        times: np.ndarray,
        n_items: int,
        history_len: int,
        cat: np.ndarray | None = None,
        num: np.ndarray | None = None,
    ) -> "TrainExamples":
        """Sort events by (user, time) (stable) and find each one's history: the previous events of the same
        user with a strictly earlier time, at most ``history_len`` of them. O(E log E), no Python loop."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        e = len(items)
        if not (len(users) == len(times) == e):
            raise ValueError("TrainExamples.build: users, items and times must have the same length")
        cat = np.zeros((e, 0), np.int64) if cat is None else np.asarray(cat, dtype=np.int64)
        num = np.zeros((e, 0), np.float32) if num is None else np.asarray(num, dtype=np.float32)
        order = np.lexsort((times, users))
        users, items, times, cat, num = users[order], items[order], times[order], cat[order], num[order]
        pos = np.arange(e)
        new_user = np.r_[True, users[1:] != users[:-1]] if e else np.zeros(0, bool)
        new_key = np.r_[True, (users[1:] != users[:-1]) | (times[1:] != times[:-1])] if e else np.zeros(0, bool)
        user_start = np.maximum.accumulate(np.where(new_user, pos, 0)) if e else pos
        key_start = np.maximum.accumulate(np.where(new_key, pos, 0)) if e else pos  # first event at this time
        hist_end = key_start
        hist_start = np.maximum(user_start, hist_end - history_len)
        return cls(users, items, hist_start, hist_end, cat, num, int(n_items), int(history_len))

    def history(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), L) int64 histories (oldest first, right-aligned), padded with N."""
        L = self.history_len
        if L == 0:
            return np.full((len(rows), 1), self.n_items, dtype=np.int64)
        idx = self.hist_end[rows][:, None] - L + np.arange(L)[None, :]
        valid = idx >= self.hist_start[rows][:, None]
        return np.where(valid, self.items[np.clip(idx, 0, None)], self.n_items)

    def inputs(self, rows: np.ndarray) -> UserInputs:
        return UserInputs(self.users[rows], self.history(rows), self.cat[rows], self.num[rows])


@dataclasses.dataclass
class ValidSet:
    """V validation requests: their user-tower inputs, relevant items (V rows) and items to exclude."""

    inputs: UserInputs
    relevance: Ragged
    exclude: Ragged | None = None

    def __len__(self) -> int:
        return len(self.inputs)


# ------------------------------------------------------------------------------------------------------------


def _row_hits(top: np.ndarray, rel: Ragged, n: int) -> np.ndarray:
    """(B,) number of entries of top (B, k) that are in the same row of rel (pair keys row * (n+1) + item)."""
    b = len(top)
    keys_rel = np.repeat(np.arange(b, dtype=np.int64), rel.lengths()) * (n + 1) + rel.values
    rows = np.repeat(np.arange(b, dtype=np.int64), top.shape[1])
    keys_top = rows * (n + 1) + top.ravel()
    hit = np.isin(keys_top, keys_rel) & (top.ravel() >= 0)
    return np.bincount(rows[hit], minlength=b)


@torch.no_grad()
def evaluate_recall(model: TwoTower, valid: ValidSet, k: int, chunk: int = 1024) -> float:
    """Mean over validation users with >= 1 relevant item of |top-k ∩ relevant| / |relevant|, where top-k is
    the exact top k of <u, v_i> over all N items minus the user's excluded items."""
    model.eval()
    n = model.n_items
    items = model.item_embeddings()  # (N, D)
    kk = min(k, n)
    recalls = []
    for s in range(0, len(valid), chunk):
        rows = np.arange(s, min(s + chunk, len(valid)))
        u = model.user_embeddings(*valid.inputs.take(rows).tensors())
        scores = u @ items.T  # (b, N)
        if valid.exclude is not None:
            ex = valid.exclude.take(rows)
            r = np.repeat(np.arange(len(rows)), ex.lengths())
            ok = (ex.values >= 0) & (ex.values < n)
            scores[torch.from_numpy(r[ok]), torch.from_numpy(ex.values[ok])] = float("-inf")
        top_scores, top = torch.topk(scores, kk, dim=1)
        top = top.numpy().astype(np.int64)
        top[~np.isfinite(top_scores.numpy())] = -1
        rel = valid.relevance.take(rows)
        n_rel = rel.lengths()
        hits = _row_hits(top, rel, n)
        keep = n_rel > 0
        recalls.append(hits[keep] / n_rel[keep])
    model.train()
    allr = np.concatenate(recalls) if recalls else np.zeros(0)
    return float(allr.mean()) if len(allr) else float("nan")


def train_two_tower(
    model: TwoTower,
    examples: TrainExamples,
    valid: ValidSet | None,
    cfg: TwoTowerConfig,
) -> tuple[TwoTower, list[dict]]:
    """Train ``model`` on ``examples`` with in-batch sampled softmax; returns (model with the best weights,
    per-epoch history [{epoch, loss, recall@k, seconds, examples_per_s}]).

    Item sampling probabilities q_i = count_i / E over the training positives (the in-batch column
    distribution). Deterministic for ``cfg.seed`` given the same initial weights (seeded numpy generator for
    shuffling, dropout and negatives; deterministic torch algorithms while training); uses ``cfg.threads``
    torch threads (the previous settings are restored on return).
    """
    e = len(examples)
    if e < 2:
        raise ValueError(f"train_two_tower: need at least 2 training positives, got {e}")
    n = model.n_items
    if examples.n_items != n:
        raise ValueError(f"train_two_tower: examples are over {examples.n_items} items, the model over {n}")
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(model, examples, valid, cfg)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _optimizers(model: torch.nn.Module, cfg: TwoTowerConfig) -> list[torch.optim.Optimizer]:
    """SparseAdam for sparse-gradient embedding tables (each shared table once), AdamW for the rest.
    ``weight_decay`` applies to the dense parameters only."""
    sparse, seen = [], set()
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.sparse and id(m.weight) not in seen:
            seen.add(id(m.weight))
            sparse.append(m.weight)
    dense = [p for p in model.parameters() if id(p) not in seen]
    opts: list[torch.optim.Optimizer] = []
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    if dense:
        opts.append(torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))
    return opts


def _train(model: TwoTower, examples: TrainExamples, valid: ValidSet | None, cfg: TwoTowerConfig):
    rng = np.random.default_rng(cfg.seed)
    e, n = len(examples), model.n_items
    counts = torch.from_numpy(np.bincount(examples.items, minlength=n)[:n].astype(np.float64))
    q = counts / counts.sum()
    bs = min(cfg.batch_size, e)
    m = cfg.n_uniform_negatives
    if cfg.logq:
        log_q = mixed_log_q(q, bs, m) if m > 0 else item_log_q(counts)
    else:
        log_q = None
    opt = _optimizers(model, cfg)
    user_oov = model.user_tower.n_users - 1
    cards = np.asarray(model.user_tower.cat_cards, dtype=np.int64)
    history: list[dict] = []
    best, best_state, bad_epochs = -np.inf, None, 0
    model.train()
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(e)
        total, steps = 0.0, 0
        for s in range(0, e, bs):
            rows = perm[s : s + bs]
            if len(rows) < 2:
                continue
            inp = examples.inputs(rows)
            if cfg.input_dropout > 0:
                if user_oov >= 0:
                    inp.users = np.where(rng.random(len(rows)) < cfg.input_dropout, user_oov, inp.users)
                if len(cards):
                    drop = rng.random(inp.cat.shape) < cfg.input_dropout
                    inp.cat = np.where(drop, cards[None, :] - 1, inp.cat)
            items = torch.from_numpy(examples.items[rows])
            u = model.user_embeddings(*inp.tensors())
            v = model.item_embeddings(items)
            neg_v = neg_idx = neg_lq = None
            if m > 0:
                neg_idx = torch.from_numpy(rng.integers(0, n, m))
                neg_v = model.item_embeddings(neg_idx)
                neg_lq = None if log_q is None else log_q[neg_idx]
            loss = sampled_softmax_loss(
                u, v, items, None if log_q is None else log_q[items], model.temperature, neg_v, neg_idx, neg_lq
            )
            for o in opt:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opt:
                o.step()
            total += float(loss.detach())
            steps += 1
        seconds = time.perf_counter() - t0
        rec = evaluate_recall(model, valid, cfg.eval_k) if valid is not None and len(valid) else float("nan")
        row = {
            "epoch": epoch,
            "loss": total / max(steps, 1),
            f"recall@{cfg.eval_k}": rec,
            "seconds": seconds,
            "examples_per_s": e / seconds if seconds > 0 else float("nan"),
        }
        history.append(row)
        logger.info(
            "two-tower epoch %d: loss %.4f, valid recall@%d %.4f, %.1fs (%.0f examples/s)",
            epoch, row["loss"], cfg.eval_k, rec, seconds, row["examples_per_s"],
        )
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"two-tower training diverged at epoch {epoch} (loss {row['loss']})")
        if np.isnan(rec):
            continue
        if rec > best:
            best, bad_epochs = rec, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                logger.info("two-tower early stop after epoch %d (best recall@%d %.4f)", epoch, cfg.eval_k, best)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
