"""Two-tower retrieval model (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019) and its in-batch sampled-softmax loss with logQ correction.

Shapes: B users (rows of a batch), N items in the catalogue, L history length, D output dimension,
E id-embedding dimension, F categorical feature columns, Fn numeric feature columns, M extra negatives.

* :class:`UserTower`: [user id embedding (with an OOV row), mean-pooled (or self-attended, SASRec-like)
  embeddings of the user's last L items (taken from the ITEM id table, shared with the item tower),
  categorical user/context feature embeddings, numeric user/context features] -> MLP -> D, L2-normalised.
* :class:`ItemTower`: [item id embedding, categorical item feature embeddings (e.g. category), numeric item
  features] -> MLP -> D, L2-normalised. The item feature values of the N catalogue items are buffers of the
  tower (saved with its weights), so the tower maps item indices to vectors on its own.
* :class:`TwoTower`: the two built towers and a fixed temperature tau; score(u, i) = <u, v_i> (cosine),
  training logits are score / tau.

The user and item id tables produce sparse gradients (only the B rows of a batch are touched; the
training loop updates them with SparseAdam), so a step costs O(B) rather than O(N + users) in the tables.
Item id tables have N + 1 rows: row N is the padding / unknown item (zero, never trained).
User id tables have n_users rows, the last one the OOV user (``Vocab.oov``); it is trained through id dropout.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """Everything needed to rebuild a :class:`TwoTower` (saved as JSON beside the weights).

    n_users          rows of the user id table including the OOV row (0: no user id embedding)
    n_items          catalogue size N (the id table has N + 1 rows)
    user_cat_cards   rows of each categorical user/context feature table (each including its OOV row)
    item_cat_cards   rows of each categorical item feature table
    """

    n_users: int
    n_items: int
    dim: int = 64
    emb_dim: int = 64
    feature_dim: int = 16
    hidden: tuple[int, ...] = (128,)
    user_cat_cards: tuple[int, ...] = ()
    user_n_numeric: int = 0
    item_cat_cards: tuple[int, ...] = ()
    item_n_numeric: int = 0
    use_history: bool = True
    temperature: float = 0.05
    history_encoder: str = "mean"  # mean | attention (SASRec-like, :class:`HistoryAttention`)
    history_len: int = 20  # L: the attention's position table
    attention_layers: int = 2
    attention_heads: int = 2

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"TowerSpec.n_items must be >= 1, got {self.n_items}")
        if self.dim < 1 or self.emb_dim < 1 or self.feature_dim < 1:
            raise ValueError("TowerSpec: dim, emb_dim and feature_dim must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"TowerSpec.temperature must be > 0, got {self.temperature}")
        if any(c < 1 for c in self.user_cat_cards + self.item_cat_cards):
            raise ValueError("TowerSpec: every categorical cardinality must be >= 1")
        if self.history_encoder not in ("mean", "attention"):
            raise ValueError(f"TowerSpec.history_encoder must be 'mean' or 'attention', got {self.history_encoder!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TowerSpec":
        d = dict(d)
        for k in ("hidden", "user_cat_cards", "item_cat_cards"):
            d[k] = tuple(int(v) for v in d.get(k, ()))
        return cls(**d)


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """Linear -> ReLU blocks over ``hidden`` widths, then a Linear to ``n_out``."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _embedding(rows: int, dim: int, padding_idx: int | None = None, sparse: bool = False) -> nn.Embedding:
    emb = nn.Embedding(rows, dim, padding_idx=padding_idx, sparse=sparse)
    nn.init.normal_(emb.weight, std=1.0 / math.sqrt(dim))
    if padding_idx is not None:
        with torch.no_grad():
            emb.weight[padding_idx].zero_()
    return emb


class ItemTower(nn.Module):
    """Item indices (K,) -> (K, D) L2-normalised vectors.

    ``item_cat`` (N + 1, F) int64 codes and ``item_num`` (N + 1, Fn) float32 values of the item features
    (row N: unknown item) are stored as buffers; omit them for an id-only tower.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        emb_dim: int = 64,
        hidden: tuple[int, ...] = (128,),
        cat_cards: tuple[int, ...] = (),
        n_numeric: int = 0,
        feature_dim: int = 16,
        item_cat: torch.Tensor | None = None,
        item_num: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.id_embedding = _embedding(n_items + 1, emb_dim, padding_idx=n_items, sparse=True)
        self.cat_embeddings = nn.ModuleList(_embedding(c, feature_dim) for c in cat_cards)
        if item_cat is None:
            item_cat = torch.zeros((n_items + 1, len(cat_cards)), dtype=torch.long)
        if item_num is None:
            item_num = torch.zeros((n_items + 1, n_numeric), dtype=torch.float32)
        item_cat = torch.as_tensor(item_cat, dtype=torch.long)
        item_num = torch.as_tensor(item_num, dtype=torch.float32)
        if item_cat.shape != (n_items + 1, len(cat_cards)) or item_num.shape != (n_items + 1, n_numeric):
            raise ValueError(
                f"ItemTower: item_cat must be ({n_items + 1}, {len(cat_cards)}) and item_num "
                f"({n_items + 1}, {n_numeric}); got {tuple(item_cat.shape)} and {tuple(item_num.shape)}"
            )
        for j, c in enumerate(cat_cards):
            if len(item_cat) and (item_cat[:, j].min() < 0 or item_cat[:, j].max() >= c):
                raise ValueError(f"ItemTower: item_cat column {j} has codes outside [0, {c})")
        self.register_buffer("item_cat", item_cat)
        self.register_buffer("item_num", item_num)
        self.mlp = mlp(emb_dim + feature_dim * len(cat_cards) + n_numeric, hidden, dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        items = items.clamp(0, self.n_items)
        parts = [self.id_embedding(items)]
        cat = self.item_cat[items]
        parts += [emb(cat[:, j]) for j, emb in enumerate(self.cat_embeddings)]
        if self.item_num.shape[1]:
            parts.append(self.item_num[items])
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class HistoryAttention(nn.Module):
    """Causal self-attention over the last L history items, SASRec-like (Kang & McAuley, ICDM 2018):
    (history (B, L) right-aligned, padded with N; its (B, L, E) item embeddings) -> (B, E) summary.

    x_0 = emb(item) + pos(position); ``layers`` pre-LayerNorm blocks x <- x + Attn(LN(x)), x <- x + FFN(LN(x)),
    where position t attends to the non-padding positions <= t (causal mask + key padding mask; masked logits
    are -1e9, not -inf, so a query with no valid key stays finite: such queries are padding positions, whose
    outputs never reach a valid one). The summary is LN(x) at the last position, the most recent item; an empty
    history gives 0. Each row is computed on its own (no cross-row op), so a user's vector does not depend on
    the batch.
    """

    def __init__(self, emb_dim: int, length: int, layers: int = 2, heads: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if emb_dim % heads:
            raise ValueError(f"HistoryAttention: emb_dim {emb_dim} is not divisible by {heads} heads")
        self.length, self.heads = max(length, 1), heads
        self.position = nn.Parameter(torch.randn(self.length, emb_dim) / math.sqrt(emb_dim))
        self.ln_att = nn.ModuleList(nn.LayerNorm(emb_dim) for _ in range(layers))
        self.qkv = nn.ModuleList(nn.Linear(emb_dim, 3 * emb_dim) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(emb_dim, emb_dim) for _ in range(layers))
        self.ln_ffn = nn.ModuleList(nn.LayerNorm(emb_dim) for _ in range(layers))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(emb_dim, 2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim))
                                 for _ in range(layers))
        self.ln_final = nn.LayerNorm(emb_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, l, e = emb.shape
        x = emb + self.position[-l:]
        causal = torch.ones(l, l, dtype=torch.bool, device=emb.device).tril()
        allowed = causal.unsqueeze(0) & valid.unsqueeze(1)  # (B, L query, L key)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, -1e9).unsqueeze(1)
        h, d = self.heads, e // self.heads
        for ln_a, qkv, out, ln_f, ffn in zip(self.ln_att, self.qkv, self.out, self.ln_ffn, self.ffn):
            q, k, v = qkv(ln_a(x)).view(b, l, 3, h, d).permute(2, 0, 3, 1, 4)  # each (B, H, L, d)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
            x = x + self.dropout(out((att @ v).transpose(1, 2).reshape(b, l, e)))
            x = x + self.dropout(ffn(ln_f(x)))
        last = self.ln_final(x[:, -1])
        return last * valid[:, -1:].to(last.dtype)  # right-aligned: the last position is valid unless empty


class UserTower(nn.Module):
    """(users (B,), history (B, L), cat (B, F), num (B, Fn)) -> (B, D) L2-normalised vectors.

    ``history`` holds item indices padded with N (the item table's padding row), embedded with
    ``history_embedding`` (pass the item tower's ``id_embedding`` to share it) and mean-pooled, or summarised by
    ``attention`` (:class:`HistoryAttention`) when given; plus log(1 + length) / log(1 + L) as one numeric
    input. ``n_users`` 0 drops the user id embedding (a purely feature/history-based tower).
    """

    def __init__(
        self,
        n_users: int,
        dim: int,
        emb_dim: int = 64,
        hidden: tuple[int, ...] = (128,),
        history_embedding: nn.Embedding | None = None,
        cat_cards: tuple[int, ...] = (),
        n_numeric: int = 0,
        feature_dim: int = 16,
        attention: HistoryAttention | None = None,
    ) -> None:
        super().__init__()
        self.n_users = n_users
        self.id_embedding = _embedding(n_users, emb_dim, sparse=True) if n_users > 0 else None
        self.history_embedding = history_embedding
        self.attention = attention  # None: mean pooling
        self.cat_embeddings = nn.ModuleList(_embedding(c, feature_dim) for c in cat_cards)
        self.cat_cards = tuple(cat_cards)
        self.n_numeric = n_numeric
        n_in = (emb_dim if n_users > 0 else 0) + feature_dim * len(cat_cards) + n_numeric
        if history_embedding is not None:
            n_in += history_embedding.embedding_dim + 1
        if n_in == 0:
            raise ValueError("UserTower: no inputs (no user id, history or features)")
        self.mlp = mlp(n_in, hidden, dim)

    def forward(
        self,
        users: torch.Tensor,
        history: torch.Tensor | None = None,
        cat: torch.Tensor | None = None,
        num: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = []
        b = len(users)
        if self.id_embedding is not None:
            parts.append(self.id_embedding(users.clamp(0, self.n_users - 1)))
        if self.history_embedding is not None:
            pad = self.history_embedding.num_embeddings - 1
            if history is None:
                history = torch.full((b, 1), pad, dtype=torch.long)
            mask = (history != pad).unsqueeze(-1).float()  # (B, L, 1)
            embedded = self.history_embedding(history.clamp(0, pad))
            count = mask.sum(dim=1)  # (B, 1)
            if self.attention is None:
                parts.append((embedded * mask).sum(dim=1) / count.clamp(min=1.0))
            else:
                parts.append(self.attention(embedded, history != pad))
            parts.append(torch.log1p(count) / math.log1p(max(history.shape[1], 1)))
        if self.cat_cards:
            if cat is None or cat.shape != (b, len(self.cat_cards)):
                raise ValueError(f"UserTower: cat must be ({b}, {len(self.cat_cards)})")
            parts += [emb(cat[:, j]) for j, emb in enumerate(self.cat_embeddings)]
        if self.n_numeric:
            if num is None or num.shape != (b, self.n_numeric):
                raise ValueError(f"UserTower: num must be ({b}, {self.n_numeric})")
            parts.append(num)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class TwoTower(nn.Module):
    """A user tower and an item tower; score(u, i) = <u, v_i>, training logits score / ``temperature``."""

    def __init__(self, user_tower: UserTower, item_tower: ItemTower, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"TwoTower: temperature must be > 0, got {temperature}")
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.temperature = float(temperature)

    @classmethod
    def from_spec(cls, spec: TowerSpec) -> "TwoTower":
        """Build from a :class:`TowerSpec`; the user tower's history pooling shares the item id table."""
        item = ItemTower(
            spec.n_items, spec.dim, spec.emb_dim, spec.hidden, spec.item_cat_cards, spec.item_n_numeric,
            spec.feature_dim,
        )
        user = UserTower(
            spec.n_users, spec.dim, spec.emb_dim, spec.hidden,
            history_embedding=item.id_embedding if spec.use_history else None,
            cat_cards=spec.user_cat_cards, n_numeric=spec.user_n_numeric, feature_dim=spec.feature_dim,
            attention=HistoryAttention(spec.emb_dim, spec.history_len, spec.attention_layers, spec.attention_heads)
            if spec.use_history and spec.history_encoder == "attention" else None,
        )
        return cls(user, item, spec.temperature)

    @property
    def n_items(self) -> int:
        return self.item_tower.n_items

    def user_embeddings(self, users, history=None, cat=None, num=None) -> torch.Tensor:
        """(B, D) normalised user vectors."""
        return self.user_tower(users, history, cat, num)

    def item_embeddings(self, items: torch.Tensor | None = None, chunk: int = 65536) -> torch.Tensor:
        """(K, D) normalised vectors of ``items`` (K,), or of all N catalogue items when None."""
        if items is None:
            items = torch.arange(self.n_items)
        return torch.cat([self.item_tower(items[s : s + chunk]) for s in range(0, len(items), chunk)] or
                         [torch.zeros((0, self.item_tower.mlp[-1].out_features))])


def sampled_softmax_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor | None,
    temperature: float,
    neg_v: torch.Tensor | None = None,
    neg_idx: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax with logQ correction, accidental-hit masking and optional mixed negatives.

    u (B, D) user vectors, v (B, D) their positive items' vectors, item_idx (B,) those items, log_q (B,) the
    log sampling probability of each row's item as a *column* (None: no correction). Optional extra
    negatives (Yang et al. 2020, "Mixed Negative Sampling"): neg_v (M, D), neg_idx (M,), neg_log_q (M,).

        logit[i, j] = <u_i, v_j> / tau - log_q[j]          (Yi et al. 2019, eq. 3: s^c = s - log p_j)
        logit[i, j] = -inf   if j != i and item[j] == item[i]   (accidental hit: the row's own positive)
        loss = mean_i  CE(logit[i, :], target = i)

    The correction *subtracts* log q: popular items appear as negatives more often than their share of the
    true softmax denominator, so their column logits are lowered by their (larger) log q; without it the
    model learns score ~ log p(i | u) - log q(i) and under-scores popular items.

    With mixed negatives the column proposal is the mixture of the in-batch (unigram q) and uniform (1/N)
    samplers; the caller should pass, for every column j (in-batch or uniform), log of the expected count of
    item j among the B + M sampled columns, log(B q_j + M / N) (constants cancel in the softmax, so with
    M = 0 this equals log q_j up to a constant). :func:`mixed_log_q` computes it.
    """
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"sampled_softmax_loss: u and v must both be (B, D), got {tuple(u.shape)}, {tuple(v.shape)}")
    b = u.shape[0]
    logits = (u @ v.T) / temperature  # (B, B)
    if log_q is not None:
        logits = logits - log_q.reshape(1, b)
    dup = item_idx.reshape(b, 1) == item_idx.reshape(1, b)
    dup &= ~torch.eye(b, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(dup, float("-inf"))
    if neg_v is not None:
        if neg_idx is None:
            raise ValueError("sampled_softmax_loss: neg_idx is required with neg_v (for accidental-hit masking)")
        nl = (u @ neg_v.T) / temperature  # (B, M)
        if neg_log_q is not None:
            nl = nl - neg_log_q.reshape(1, -1)
        nl = nl.masked_fill(item_idx.reshape(b, 1) == neg_idx.reshape(1, -1), float("-inf"))
        logits = torch.cat([logits, nl], dim=1)
    return F.cross_entropy(logits, torch.arange(b, device=u.device))


def item_log_q(counts: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(N,) log q_i = log(count_i / sum count) of the item sampling distribution of in-batch negatives
    (every training positive is a column, so q is the item frequency among training positives)."""
    counts = counts.to(torch.float64)
    total = counts.sum().clamp(min=1.0)
    return torch.log((counts / total).clamp(min=eps)).to(torch.float32)


def mixed_log_q(q: torch.Tensor, batch_size: int, n_uniform: int) -> torch.Tensor:
    """(N,) log(B q_i + M / N): log expected count of item i among B in-batch (unigram q) and M uniform
    columns. Used as the logQ correction of both column kinds under mixed negative sampling."""
    n = q.shape[0]
    return torch.log(batch_size * q.to(torch.float64) + n_uniform / n).clamp(min=-1e4).to(torch.float32)
