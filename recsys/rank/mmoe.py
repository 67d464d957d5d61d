"""Multi-task heavy-ranking networks, built from built parts.

Shapes used throughout:
    B  examples (request, candidate pairs) in a batch
    F  input features of the multi-task core (``F_in``); ``F_cat`` categorical, ``F_dense`` dense fields
    L  history length (most recent items of the user, padded)
    D  embedding dim
    E  experts
    T  tasks (e.g. click, like, ...)

Every multi-task core maps ``x (B, F) -> logits (B, T)`` so the three architectures are interchangeable
for ablation (:func:`build_multitask`):

- :class:`MMoE`: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018, "Modeling Task Relationships in
  Multi-task Learning with Multi-gate Mixture-of-Experts"): ``f_t(x) = sum_e g_t(x)_e * expert_e(x)``,
  ``g_t(x) = softmax(W_t x)``, ``logit_t = tower_t(f_t(x))``.
- :class:`SharedBottom`: one shared bottom network, one tower per task (Caruana, 1997).
- :class:`SingleTask`: ``T`` independent networks, one per task.

:class:`RankerNet` embeds categorical fields, pools the user's history against the candidate
(:class:`TargetAttentionPooling`) and feeds the concatenation into a core.

The ESMM option (Ma et al., SIGIR 2018, "Entire Space Multi-Task Model") is expressed by ``esmm_parent``:
task ``j`` with parent ``i`` has a *conditional* logit ``logit_j -> p_{j|i}``, and its entire-space
probability is ``p_ij = p_i * p_{j|i}`` (chains compose: a parent may itself have a parent). See
:func:`task_probabilities` and :func:`multitask_loss`.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "Gate",
    "MLP",
    "MMoE",
    "RankerNet",
    "SharedBottom",
    "SingleTask",
    "TargetAttentionPooling",
    "build_multitask",
    "multitask_loss",
    "ranker_input_dim",
    "task_log_probabilities",
    "task_probabilities",
    "validate_esmm_parent",
]


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Feed-forward network ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Each hidden layer is ``Linear -> activation -> Dropout``. The last layer is a plain ``Linear`` unless
    ``final_activation`` is true (experts and shared bottoms end in an activation; towers end in a logit).
    Shapes: ``(B, dims[0]) -> (B, dims[-1])``.
    """

    def __init__(
        self,
        dims: Sequence[int],
        dropout: float = 0.0,
        activation: Callable[[], nn.Module] = nn.ReLU,
        *,
        final_activation: bool = False,
    ) -> None:
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"MLP: dims must list >= 2 positive sizes (in, ..., out), got {dims}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        n_layers = len(dims) - 1
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            last = i == n_layers - 1
            if not last or final_activation:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.dims = dims
        self.in_dim = dims[0]
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Gate(nn.Module):
    """Gating network of one task: ``g(x) = softmax(W x)`` over experts (Ma et al. 2018, eq. 5).

    ``W`` is ``(E, F)`` without bias, as in the paper. Shapes: ``(B, F) -> (B, E)``, rows sum to 1.
    """

    def __init__(self, in_dim: int, n_experts: int) -> None:
        super().__init__()
        if in_dim < 1 or n_experts < 1:
            raise ValueError(f"Gate: in_dim and n_experts must be >= 1, got {in_dim}, {n_experts}")
        self.linear = nn.Linear(in_dim, n_experts, bias=False)
        self.in_dim = int(in_dim)
        self.n_experts = int(n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def _check_towers(towers: nn.ModuleList, where: str) -> None:
    if not isinstance(towers, nn.ModuleList) or len(towers) == 0:
        raise TypeError(f"{where}: towers must be a non-empty nn.ModuleList (one tower per task)")


# --------------------------------------------------------------------------------------------------------
# Multi-task cores: (B, F) -> (B, T)
# --------------------------------------------------------------------------------------------------------


class MMoE(nn.Module):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018, eq. 4-5).

    ``experts`` E modules ``(B, F) -> (B, H)`` (same H), ``gates`` T modules ``(B, F) -> (B, E)`` softmax
    weights, ``towers`` T modules ``(B, H) -> (B, 1)``. For task t:
    ``f_t(x) = sum_e g_t(x)[e] * expert_e(x)``, ``logit_t = tower_t(f_t(x))``.

    ``forward(x) -> (B, T)`` logits; ``forward(x, return_gates=True) -> (logits, gates (B, T, E))``.
    The gate weights of the last forward pass are also kept, detached, in ``self.last_gates``.
    """

    def __init__(self, experts: nn.ModuleList, gates: nn.ModuleList, towers: nn.ModuleList) -> None:
        super().__init__()
        if not isinstance(experts, nn.ModuleList) or len(experts) == 0:
            raise TypeError("MMoE: experts must be a non-empty nn.ModuleList")
        if not isinstance(gates, nn.ModuleList) or len(gates) == 0:
            raise TypeError("MMoE: gates must be a non-empty nn.ModuleList (one gate per task)")
        _check_towers(towers, "MMoE")
        if len(gates) != len(towers):
            raise ValueError(f"MMoE: need one gate per tower (task), got {len(gates)} gates, {len(towers)} towers")
        if len({id(g) for g in gates}) != len(gates):
            raise ValueError("MMoE: the same gate module is passed for several tasks; give each task its own gate")
        for t, g in enumerate(gates):
            n_e = getattr(g, "n_experts", None)
            if n_e is not None and n_e != len(experts):
                raise ValueError(f"MMoE: gate {t} mixes {n_e} experts, but {len(experts)} experts were given")
        self.experts = experts
        self.gates = gates
        self.towers = towers
        self.n_tasks = len(towers)
        self.n_experts = len(experts)
        in_dims = {getattr(m, "in_dim", None) for m in [*experts, *gates]} - {None}
        self.in_dim = in_dims.pop() if len(in_dims) == 1 else None
        self.last_gates: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, return_gates: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        g = torch.stack([gate(x) for gate in self.gates], dim=1)  # (B, T, E)
        mixed = torch.einsum("bte,beh->bth", g, h)  # (B, T, H)
        logits = torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)  # (B, T)
        self.last_gates = g.detach()
        return (logits, g) if return_gates else logits


class SharedBottom(nn.Module):
    """Shared-bottom multi-task network: ``logit_t = tower_t(bottom(x))``. ``(B, F) -> (B, T)``.

    ``forward(x, return_gates=True)`` returns ``(logits, None)`` (no gates) to keep the MMoE contract.
    """

    def __init__(self, bottom: nn.Module, towers: nn.ModuleList) -> None:
        super().__init__()
        _check_towers(towers, "SharedBottom")
        self.bottom = bottom
        self.towers = towers
        self.n_tasks = len(towers)
        self.in_dim = getattr(bottom, "in_dim", None)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        z = self.bottom(x)
        logits = torch.cat([tower(z) for tower in self.towers], dim=1)
        return (logits, None) if return_gates else logits


class SingleTask(nn.Module):
    """T independent single-task networks, each ``(B, F) -> (B, 1)``; together ``(B, F) -> (B, T)``.

    ``forward(x, return_gates=True)`` returns ``(logits, None)``.
    """

    def __init__(self, models: nn.ModuleList) -> None:
        super().__init__()
        if not isinstance(models, nn.ModuleList) or len(models) == 0:
            raise TypeError("SingleTask: models must be a non-empty nn.ModuleList (one model per task)")
        self.models = models
        self.n_tasks = len(models)
        in_dims = {getattr(m, "in_dim", None) for m in models} - {None}
        self.in_dim = in_dims.pop() if len(in_dims) == 1 else None

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        logits = torch.cat([m(x) for m in self.models], dim=1)
        return (logits, None) if return_gates else logits


def _build_mmoe(in_dim, n_tasks, n_experts, expert_dims, tower_dims, dropout) -> nn.Module:
    experts = nn.ModuleList(
        MLP((in_dim, *expert_dims), dropout, final_activation=True) for _ in range(n_experts)
    )
    gates = nn.ModuleList(Gate(in_dim, n_experts) for _ in range(n_tasks))
    towers = nn.ModuleList(MLP((expert_dims[-1], *tower_dims, 1), dropout) for _ in range(n_tasks))
    return MMoE(experts, gates, towers)


def _build_shared_bottom(in_dim, n_tasks, n_experts, expert_dims, tower_dims, dropout) -> nn.Module:
    bottom = MLP((in_dim, *expert_dims), dropout, final_activation=True)
    towers = nn.ModuleList(MLP((expert_dims[-1], *tower_dims, 1), dropout) for _ in range(n_tasks))
    return SharedBottom(bottom, towers)


def _build_single_task(in_dim, n_tasks, n_experts, expert_dims, tower_dims, dropout) -> nn.Module:
    return SingleTask(
        nn.ModuleList(MLP((in_dim, *expert_dims, *tower_dims, 1), dropout) for _ in range(n_tasks))
    )


#: name -> builder; error messages list these keys, so they cannot drift from what is supported.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mmoe": _build_mmoe,
    "shared_bottom": _build_shared_bottom,
    "single_task": _build_single_task,
}


def build_multitask(
    arch: str,
    in_dim: int,
    n_tasks: int,
    n_experts: int = 4,
    expert_dims: Sequence[int] = (64,),
    tower_dims: Sequence[int] = (32,),
    dropout: float = 0.0,
) -> nn.Module:
    """Build a multi-task core ``(B, in_dim) -> (B, n_tasks)`` logits for ablation.

    - ``"mmoe"``: ``n_experts`` experts ``MLP(in_dim, *expert_dims)`` (ReLU output), one :class:`Gate` and one
      tower ``MLP(expert_dims[-1], *tower_dims, 1)`` per task.
    - ``"shared_bottom"``: one bottom of the size of one expert, the same towers.
    - ``"single_task"``: per task an ``MLP(in_dim, *expert_dims, *tower_dims, 1)``.
    ``n_experts`` is ignored by the last two.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"build_multitask: unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    expert_dims = tuple(int(d) for d in expert_dims)
    tower_dims = tuple(int(d) for d in tower_dims)
    if not expert_dims:
        raise ValueError("build_multitask: expert_dims must list at least one hidden size")
    for name, v in (("in_dim", in_dim), ("n_tasks", n_tasks), ("n_experts", n_experts)):
        if int(v) < 1:
            raise ValueError(f"build_multitask: {name} must be >= 1, got {v}")
    return ARCHITECTURES[arch](int(in_dim), int(n_tasks), int(n_experts), expert_dims, tower_dims, float(dropout))


# --------------------------------------------------------------------------------------------------------
# History pooling
# --------------------------------------------------------------------------------------------------------


class TargetAttentionPooling(nn.Module):
    """Pool a user's history ``h (B, L, D)`` against a candidate ``c (B, D)`` into ``(B, D)``.

    Score of history position ``l`` (``mode``):

    - ``"dot"``: scaled dot product ``s_l = <h_l, c> / sqrt(D)`` (Vaswani et al., 2017).
    - ``"din"`` (default): ``s_l = <h_l, c> / sqrt(D) + MLP([h_l, c, h_l * c, h_l - c])``, the activation
      unit of DIN (Zhou et al., KDD 2018, "Deep Interest Network"; sigmoid hidden units here) added to the
      dot product. The MLP's last layer starts at zero, so at initialisation the pooling is exactly the
      ``"dot"`` one (similar items get more weight) and training learns the correction.

    Weights ``a = softmax_L(s)`` over unmasked positions (unlike the original DIN, which does not normalise);
    output ``sum_l a_l h_l``. ``mask (B, L)`` bool: True = real item. Masked positions get weight exactly 0
    (their embeddings do not affect the output); a row with no real item returns zeros.
    ``forward(..., return_weights=True)`` also returns ``a (B, L)``.
    """

    MODES = ("din", "dot")

    def __init__(self, dim: int, mode: str = "din", hidden: Sequence[int] = (36,)) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"TargetAttentionPooling: dim must be >= 1, got {dim}")
        if mode not in self.MODES:
            raise ValueError(f"TargetAttentionPooling: unknown mode {mode!r}; expected one of {list(self.MODES)}")
        self.dim = int(dim)
        self.mode = mode
        self.scale = 1.0 / math.sqrt(dim)
        self.mlp: MLP | None = None
        if mode == "din":
            self.mlp = MLP((4 * dim, *hidden, 1), activation=nn.Sigmoid)
            last = self.mlp.net[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(
        self, hist: torch.Tensor, mask: torch.Tensor, cand: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if hist.ndim != 3 or cand.ndim != 2 or mask.shape != hist.shape[:2] or cand.shape[0] != hist.shape[0]:
            raise ValueError(
                "TargetAttentionPooling: expected hist (B, L, D), mask (B, L), cand (B, D); got "
                f"{tuple(hist.shape)}, {tuple(mask.shape)}, {tuple(cand.shape)}"
            )
        mask = mask.to(torch.bool)
        c = cand.unsqueeze(1)  # (B, 1, D)
        scores = (hist * c).sum(-1) * self.scale  # (B, L)
        if self.mlp is not None:
            ce = c.expand_as(hist)
            feats = torch.cat([hist, ce, hist * ce, hist - ce], dim=-1)  # (B, L, 4D)
            scores = scores + self.mlp(feats).squeeze(-1)
        any_real = mask.any(dim=1, keepdim=True)  # (B, 1)
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = torch.where(any_real, scores, torch.zeros_like(scores))  # all-masked rows: no -inf row
        weights = torch.softmax(scores, dim=1) * mask  # all-masked rows -> 0
        pooled = torch.einsum("bl,bld->bd", weights, torch.where(mask.unsqueeze(-1), hist, 0.0))
        return (pooled, weights) if return_weights else pooled


# --------------------------------------------------------------------------------------------------------
# The ranker network
# --------------------------------------------------------------------------------------------------------


def ranker_input_dim(
    field_embeddings: Mapping[str, nn.Embedding], n_dense: int, with_history: bool, item_field: str = "item"
) -> int:
    """Input width ``F`` of the core behind a :class:`RankerNet` with these parts.

    ``F = sum of all field embedding dims (item included) + D_item if with_history + n_dense``.
    """
    if item_field not in field_embeddings:
        raise ValueError(
            f"RankerNet: field_embeddings has no item table {item_field!r}; fields are {list(field_embeddings)}"
        )
    width = sum(int(e.embedding_dim) for e in field_embeddings.values()) + int(n_dense)
    if with_history:
        width += int(field_embeddings[item_field].embedding_dim)
    return width


class RankerNet(nn.Module):
    """Heavy-ranker network: embeddings + target-attention history pooling + a multi-task core.

    Parts:
      ``field_embeddings``: ordered mapping name -> ``nn.Embedding``; one entry, ``item_field``, is the item
        table, shared by the candidate item and the history. The other entries, in order, embed the columns
        of ``cat``.
      ``n_dense``: number of dense features.
      ``history_pool``: :class:`TargetAttentionPooling` over the item dim, or None (no history input).
      ``core``: a multi-task module ``(B, F) -> (B, T)`` with ``F = ranker_input_dim(...)``.

    ``forward(cat (B, F_cat) int64, dense (B, F_dense) float, hist (B, L) int64, hist_mask (B, L) bool,
    item_idx (B,) int64) -> (B, T)`` logits, where the core input is
    ``[emb_f(cat[:, f]) for f] ++ item_emb(item_idx) ++ pool(item_emb(hist), hist_mask, item_emb(item_idx))
    ++ dense``. History positions where ``hist_mask`` is False (padding) are ignored; ``hist`` and
    ``hist_mask`` may be None when ``history_pool`` is None.
    """

    def __init__(
        self,
        field_embeddings: Mapping[str, nn.Embedding],
        n_dense: int,
        history_pool: TargetAttentionPooling | None,
        core: nn.Module,
        item_field: str = "item",
    ) -> None:
        super().__init__()
        if not all(isinstance(e, nn.Embedding) for e in field_embeddings.values()):
            raise TypeError("RankerNet: field_embeddings must map field names to nn.Embedding tables")
        in_dim = ranker_input_dim(field_embeddings, n_dense, history_pool is not None, item_field)
        if n_dense < 0:
            raise ValueError(f"RankerNet: n_dense must be >= 0, got {n_dense}")
        item_dim = field_embeddings[item_field].embedding_dim
        if history_pool is not None and history_pool.dim != item_dim:
            raise ValueError(
                f"RankerNet: history_pool.dim = {history_pool.dim} but the item table {item_field!r} has "
                f"dim {item_dim}"
            )
        core_in = getattr(core, "in_dim", None)
        if core_in is not None and core_in != in_dim:
            raise ValueError(
                f"RankerNet: core expects {core_in} input features, but embeddings + history + dense give "
                f"{in_dim} (use ranker_input_dim to size the core)"
            )
        self.field_embeddings = nn.ModuleDict(dict(field_embeddings))
        self.item_field = item_field
        self.cat_fields = [k for k in field_embeddings if k != item_field]
        self.n_dense = int(n_dense)
        self.history_pool = history_pool
        self.core = core
        self.in_dim = in_dim

    @property
    def item_embedding(self) -> nn.Embedding:
        """The item table shared by the candidate and the history."""
        return self.field_embeddings[self.item_field]

    def features(
        self,
        cat: torch.Tensor,
        dense: torch.Tensor | None,
        hist: torch.Tensor | None,
        hist_mask: torch.Tensor | None,
        item_idx: torch.Tensor,
    ) -> torch.Tensor:
        """The core input ``(B, F)``."""
        B = item_idx.shape[0]
        if cat.ndim != 2 or cat.shape != (B, len(self.cat_fields)):
            raise ValueError(
                f"RankerNet: cat must be (B={B}, {len(self.cat_fields)}) for fields {self.cat_fields}, "
                f"got {tuple(cat.shape)}"
            )
        parts = [self.field_embeddings[name](cat[:, f]) for f, name in enumerate(self.cat_fields)]
        item_table = self.item_embedding
        cand = item_table(item_idx)  # (B, D)
        parts.append(cand)
        if self.history_pool is not None:
            if hist is None or hist_mask is None or hist.shape != hist_mask.shape or hist.shape[0] != B:
                raise ValueError(
                    "RankerNet: hist and hist_mask must both be (B, L) when a history_pool is set, got "
                    f"{None if hist is None else tuple(hist.shape)}, "
                    f"{None if hist_mask is None else tuple(hist_mask.shape)}"
                )
            parts.append(self.history_pool(item_table(hist), hist_mask, cand))
        if self.n_dense:
            if dense is None or dense.shape != (B, self.n_dense):
                raise ValueError(
                    f"RankerNet: dense must be (B={B}, {self.n_dense}), got "
                    f"{None if dense is None else tuple(dense.shape)}"
                )
            parts.append(dense.to(cand.dtype))
        return torch.cat(parts, dim=1)

    def forward(
        self,
        cat: torch.Tensor,
        dense: torch.Tensor | None = None,
        hist: torch.Tensor | None = None,
        hist_mask: torch.Tensor | None = None,
        item_idx: torch.Tensor | None = None,
        return_gates: bool = False,
    ):
        if item_idx is None:
            raise ValueError("RankerNet: item_idx (B,) candidate item indices is required")
        x = self.features(cat, dense, hist, hist_mask, item_idx)
        return self.core(x, return_gates=True) if return_gates else self.core(x)


# --------------------------------------------------------------------------------------------------------
# Multi-task probabilities and loss (with the ESMM option)
# --------------------------------------------------------------------------------------------------------

_LOG_CLAMP = -100.0  # like torch.nn.BCELoss: log terms are clamped at -100


def validate_esmm_parent(esmm_parent: Sequence[int | None] | None, n_tasks: int) -> list[int | None]:
    """Check ``esmm_parent`` (one entry per task: parent task index or None) and return it as a list.

    ``None`` for the whole argument means every task is independent. Parents must be other tasks, in
    range, without cycles.
    """
    if esmm_parent is None:
        return [None] * n_tasks
    parents = list(esmm_parent)
    if len(parents) != n_tasks:
        raise ValueError(f"esmm_parent: need one entry per task ({n_tasks}), got {len(parents)}: {parents}")
    for t, p in enumerate(parents):
        if p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < n_tasks or p == t:
            raise ValueError(
                f"esmm_parent[{t}] = {p!r}: expected None or the index (0..{n_tasks - 1}) of another task"
            )
    for t in range(n_tasks):  # cycle check: walk up at most T steps
        seen, p = {t}, parents[t]
        while p is not None:
            if p in seen:
                raise ValueError(f"esmm_parent: cycle through task {t}: {parents}")
            seen.add(p)
            p = parents[p]
    return parents


def _log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(logp))`` for ``logp <= 0``, stable (Maechler, 2012)."""
    logp = logp.clamp(max=-1e-30)
    return torch.where(logp > -math.log(2.0), torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


def task_log_probabilities(
    logits: torch.Tensor, esmm_parent: Sequence[int | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entire-space ``(log P, log(1 - P))``, each ``(B, T)``, from ``(B, T)`` logits.

    Task without parent: ``P_t = sigmoid(logit_t)``. Task with parent ``i`` (ESMM, Ma et al. SIGIR 2018,
    eq. 2): ``P_t = P_i * sigmoid(logit_t)`` (computed in log space: ``log P_t = log P_i + logsigmoid``).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, T), got {tuple(logits.shape)}")
    T = logits.shape[1]
    parents = validate_esmm_parent(esmm_parent, T)
    log_cond = F.logsigmoid(logits)  # (B, T) log p_{t | parent}
    log_p: list[torch.Tensor | None] = [None] * T

    def resolve(t: int) -> torch.Tensor:
        if log_p[t] is None:
            p = parents[t]
            log_p[t] = log_cond[:, t] if p is None else resolve(p) + log_cond[:, t]
        return log_p[t]  # type: ignore[return-value]

    cols = [resolve(t) for t in range(T)]
    logP = torch.stack(cols, dim=1)
    # log(1 - P): exact logsigmoid(-x) for root tasks, log1mexp for ESMM products.
    log1m = torch.stack(
        [F.logsigmoid(-logits[:, t]) if parents[t] is None else _log1mexp(cols[t]) for t in range(T)], dim=1
    )
    return logP, log1m


def task_probabilities(logits: torch.Tensor, esmm_parent: Sequence[int | None] | None = None) -> torch.Tensor:
    """Entire-space probabilities ``(B, T)``: ``sigmoid`` for root tasks, ``P_parent * sigmoid`` under ESMM.

    Under ESMM a child's probability never exceeds its parent's (``p_like <= p_click``).
    """
    return task_log_probabilities(logits, esmm_parent)[0].exp()


def multitask_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task_weights: torch.Tensor | Sequence[float] | None = None,
    esmm_parent: Sequence[int | None] | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sum over tasks of the entire-space binary cross-entropy.

    ``loss = sum_t task_weights[t] * sum_b w_b * BCE(P_bt, y_bt) / sum_b w_b`` with
    ``BCE(P, y) = -(y log P + (1 - y) log(1 - P))``, ``P`` from :func:`task_probabilities`; log terms are
    clamped at -100 (as ``torch.nn.BCELoss``). For an ESMM child ``j`` of ``i`` this is the ESMM loss
    ``BCE(p_i, y_i) + BCE(p_i * p_{j|i}, y_j)`` (Ma et al. SIGIR 2018, eq. 3), where ``y_j`` is the
    entire-space label (e.g. clicked and liked). Shapes: ``logits, labels (B, T)``, ``task_weights (T,)``
    (default ones), ``sample_weight (B,)`` or ``(B, T)`` (default ones).
    """
    if labels.shape != logits.shape:
        raise ValueError(f"labels must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    B, T = logits.shape
    logP, log1m = task_log_probabilities(logits, esmm_parent)
    y = labels.to(logits.dtype)
    per = -(y * logP.clamp(min=_LOG_CLAMP) + (1.0 - y) * log1m.clamp(min=_LOG_CLAMP))  # (B, T)
    if task_weights is None:
        tw = torch.ones(T, dtype=logits.dtype, device=logits.device)
    else:
        tw = torch.as_tensor(task_weights, dtype=logits.dtype, device=logits.device)
        if tw.shape != (T,):
            raise ValueError(f"task_weights must have one weight per task ({T}), got shape {tuple(tw.shape)}")
    if sample_weight is None:
        per_task = per.mean(dim=0)
    else:
        w = sample_weight.to(logits.dtype)
        if w.shape == (B,):
            w = w.unsqueeze(1).expand(B, T)
        if w.shape != (B, T):
            raise ValueError(f"sample_weight must be (B,) or (B, T) = ({B}, {T}), got {tuple(w.shape)}")
        per_task = (per * w).sum(dim=0) / w.sum(dim=0).clamp(min=torch.finfo(logits.dtype).tiny)
    return (per_task * tw).sum()
