"""Approximate maximum-inner-product search over item embeddings: a thin wrapper around FAISS.

Shapes: N indexed vectors (items), D dimension, B queries, k results per query.

The index always uses the inner-product metric (``faiss.METRIC_INNER_PRODUCT``); with L2-normalised
two-tower embeddings this is cosine similarity. Supported factory strings (validated before FAISS sees
them, see :data:`VALID_FORMS`):

* ``Flat``                         exact search (brute force), the reference
* ``HNSW{M}``                      graph index (Malkov & Yashunin 2018), e.g. ``HNSW32``; ``efSearch`` at query time
* ``IVF{nlist},Flat``              inverted lists over k-means cells (Jegou et al. 2011); ``nprobe`` cells visited
* ``IVF{nlist},PQ{m}[x{nbits}]``   the same with product-quantised codes (m sub-quantisers of nbits bits)
* ``OPQ{m},IVF{nlist},PQ{m}[x{nbits}]``  with a learned rotation first (Ge et al. 2013)

Ids returned are row positions ``0..N-1`` of the embeddings passed to :meth:`AnnIndex.build` (the catalogue's
item indices when the rows are the catalogue's items).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

VALID_FORMS = (
    "Flat",
    "HNSW{M} (e.g. HNSW32)",
    "IVF{nlist},Flat (e.g. IVF1024,Flat)",
    "IVF{nlist},PQ{m}[x{nbits}] (e.g. IVF1024,PQ16)",
    "OPQ{m},IVF{nlist},PQ{m}[x{nbits}] (e.g. OPQ16,IVF1024,PQ16)",
)

_PATTERNS = (
    ("flat", re.compile(r"^Flat$")),
    ("hnsw", re.compile(r"^HNSW(?P<M>\d+)(?:,Flat)?$")),
    ("ivf_flat", re.compile(r"^IVF(?P<nlist>\d+),Flat$")),
    ("ivf_pq", re.compile(r"^(?:OPQ(?P<opq>\d+),)?IVF(?P<nlist>\d+),PQ(?P<m>\d+)(?:x(?P<nbits>\d+))?$")),
)

# faiss' k-means warns below 39 training points per centroid; we size nlist / nbits to stay above it.
_MIN_POINTS_PER_CENTROID = 39
# auto mode searches exhaustively when k >= N / _EXACT_FRACTION or N <= _EXACT_BELOW: a brute-force scan of
# 16k x D costs about what an HNSW search (efSearch x M distance computations) or an IVF probe does
_EXACT_FRACTION = 8
_EXACT_BELOW = 16384


def parse_factory(factory: str) -> tuple[str, dict[str, int]]:
    """Validate a factory string; returns (kind, integer parameters). Raises ValueError listing valid forms."""
    if not isinstance(factory, str):
        raise TypeError(f"index factory must be a string, got {type(factory).__name__}")
    s = factory.replace(" ", "")
    for kind, pat in _PATTERNS:
        m = pat.match(s)
        if m:
            params = {k: int(v) for k, v in m.groupdict().items() if v is not None}
            if kind == "hnsw" and not (2 <= params["M"] <= 512):
                raise ValueError(f"index factory {factory!r}: HNSW M must be in [2, 512]")
            if "nlist" in params and params["nlist"] < 1:
                raise ValueError(f"index factory {factory!r}: IVF nlist must be >= 1")
            if kind == "ivf_pq":
                params.setdefault("nbits", 8)
                if params["m"] < 1 or not (1 <= params["nbits"] <= 16):
                    raise ValueError(f"index factory {factory!r}: need PQ m >= 1 and 1 <= nbits <= 16")
                if "opq" in params and params["opq"] != params["m"]:
                    raise ValueError(f"index factory {factory!r}: OPQ{{m}} must use the same m as PQ{{m}}")
            return kind, params
    raise ValueError(
        f"invalid index factory {factory!r}; valid forms: " + "; ".join(VALID_FORMS)
    )


def _sized_factory(kind: str, p: dict[str, int], n: int, d: int, factory: str) -> str:
    """The factory string actually built: IVF nlist and PQ nbits capped to what N training points support."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{p['M']}"
    nlist = p["nlist"]
    cap = max(1, n // _MIN_POINTS_PER_CENTROID)
    if nlist > cap:
        logger.warning(
            "index %s: %d vectors support at most %d IVF lists (%d points per list); using IVF%d",
            factory, n, cap, _MIN_POINTS_PER_CENTROID, cap,
        )
        nlist = cap
    if kind == "ivf_flat":
        return f"IVF{nlist},Flat"
    m, nbits = p["m"], p["nbits"]
    if d % m:
        raise ValueError(f"index factory {factory!r}: PQ m={m} must divide the dimension D={d}")
    nbits_cap = max(1, int(math.floor(math.log2(max(2, n // _MIN_POINTS_PER_CENTROID)))))
    if nbits > nbits_cap:
        logger.warning("index %s: %d vectors support at most %d PQ bits; using PQ%dx%d", factory, n, nbits_cap, m,
                       nbits_cap)
        nbits = nbits_cap
    prefix = f"OPQ{m}," if "opq" in p else ""
    if prefix and n < _MIN_POINTS_PER_CENTROID * 256:  # faiss trains OPQ's rotation with an 8-bit PQ
        logger.warning("index %s: %d vectors are too few to train OPQ (needs %d); building without it",
                       factory, n, _MIN_POINTS_PER_CENTROID * 256)
        prefix = ""
    return f"{prefix}IVF{nlist},PQ{m}x{nbits}"


def _as_matrix(x: np.ndarray, d: int | None, what: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d array (rows, D), got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{what}: expected dimension D={d}, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return x


class AnnIndex:
    """A FAISS inner-product index over N vectors; build with :meth:`build`, or :meth:`load` a saved one."""

    def __init__(self, index, factory: str, vectors: np.ndarray | None = None) -> None:
        self.index = index
        self.factory = factory
        self._vectors = vectors  # (N, D) originals, kept after build for exact fallbacks and recall checks
        self._exact = None
        # what search(exact=None) does: None the auto rule (:meth:`auto_exact`), True exhaustive, False the index
        # structure (a serving-time what-if, e.g. ``recsys experiment frontier``'s search-width sweep)
        self.exact: bool | None = None

    # ---------------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        factory: str = "Flat",
        nprobe: int = 16,
        ef_search: int = 128,
        seed: int = 0,
        threads: int | None = None,
        keep_vectors: bool = True,
        ef_construction: int = 40,
    ) -> "AnnIndex":
        """Build (train + add) an index over ``embeddings`` (N, D) float32.

        IVF lists and PQ bits are capped to what N supports (with a warning); ``nprobe`` (IVF cells visited)
        and ``ef_search`` (HNSW beam width; FAISS uses max(efSearch, k)) are set for queries;
        ``ef_construction`` is the HNSW build beam (FAISS default 40; larger builds a better graph, slower,
        which matters for large k). ``seed`` seeds
        the k-means of IVF/PQ training. HNSW construction with more than one thread is not bit-for-bit
        reproducible (insertion order races); save the built index to reproduce results exactly.
        """
        import faiss

        kind, params = parse_factory(factory)
        x = _as_matrix(embeddings, None, "AnnIndex.build: embeddings")
        n, d = x.shape
        if n == 0:
            raise ValueError("AnnIndex.build: embeddings is empty (N = 0)")
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        built = _sized_factory(kind, params, n, d, factory)
        try:
            index = faiss.index_factory(d, built, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"index factory {factory!r}: FAISS rejected {built!r}: {exc}") from None
        if kind in ("ivf_flat", "ivf_pq"):
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = int(seed)
            if kind == "ivf_pq":
                ivf_pq = faiss.downcast_index(ivf)
                ivf_pq.pq.cp.seed = int(seed)
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = int(ef_construction)
        if not index.is_trained:
            index.train(x)
        index.add(x)
        out = cls(index, built, x if keep_vectors else None)
        out.set_search_params(nprobe=nprobe, ef_search=ef_search)
        logger.info("built FAISS index %s over %d x %d vectors (%d bytes)", built, n, d, out.nbytes())
        return out

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set query-time parameters that apply to this index kind (others are ignored)."""
        import faiss

        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:
            ivf = None
        if ivf is not None and nprobe is not None:
            if nprobe < 1:
                raise ValueError(f"nprobe must be >= 1, got {nprobe}")
            ivf.nprobe = int(min(nprobe, ivf.nlist))
        hnsw = getattr(faiss.downcast_index(self.index), "hnsw", None)
        if hnsw is not None and ef_search is not None:
            if ef_search < 1:
                raise ValueError(f"ef_search must be >= 1, got {ef_search}")
            hnsw.efSearch = int(ef_search)

    def search_width(self) -> tuple[str | None, int | None, int | None]:
        """(parameter, current value, largest useful value) of this index's query-time search width:
        ("nprobe", nprobe, nlist) for IVF, ("efSearch", efSearch, None) for HNSW, (None, None, None) for an
        index without one (Flat)."""
        import faiss

        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            return "nprobe", int(ivf.nprobe), int(ivf.nlist)
        hnsw = getattr(faiss.downcast_index(self.index), "hnsw", None)
        if hnsw is not None:
            return "efSearch", int(hnsw.efSearch), None
        return None, None, None

    # ---------------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def nbytes(self) -> int:
        """Size of the serialized index in bytes (a proxy for its memory)."""
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)

    def vectors(self) -> np.ndarray:
        """(N, D) the indexed vectors (the originals after build; decoded from the index after load)."""
        if self._vectors is None:
            import faiss

            try:
                ivf = faiss.extract_index_ivf(self.index)
                ivf.make_direct_map()
            except RuntimeError:
                pass
            self._vectors = np.ascontiguousarray(self.index.reconstruct_n(0, self.ntotal), dtype=np.float32)
        return self._vectors

    def _exact_index(self):
        """The exhaustive IndexFlatIP over the vectors, built on first use. Built completely, then published
        with one assignment: a concurrent caller sees None (and builds its own) or the full index, never a
        half-filled one."""
        exact = self._exact
        if exact is None:
            import faiss

            exact = faiss.IndexFlatIP(self.dim)
            exact.add(self.vectors())
            self._exact = exact
        return exact

    def search(self, queries: np.ndarray, k: int, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products per query.

        queries (B, D) float32 -> (ids (B, k) int64 with -1 padding, scores (B, k) float32 with NaN padding),
        highest score first. ``exact`` None: the index's :attr:`exact` setting, whose default None is auto:
        exhaustive search when N <= 16384 or k >= N / 8 (:meth:`auto_exact`), where an ANN structure would visit
        about as many vectors as brute force (and an HNSW graph cannot enumerate the whole collection); True /
        False force exhaustive / index search (k >= N is always exhaustive).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        q = _as_matrix(queries, self.dim, "AnnIndex.search: queries")
        b = q.shape[0]
        kk = min(int(k), self.ntotal)
        if kk == 0 or b == 0:
            return np.full((b, k), -1, dtype=np.int64), np.full((b, k), np.nan, dtype=np.float32)
        if exact is None:
            exact = self.exact
        if exact is None:
            exact = self.auto_exact(kk)
        index = self._exact_index() if (exact or kk >= self.ntotal) else self.index
        hnsw = None if index is not self.index else getattr(faiss_downcast(index), "hnsw", None)
        if hnsw is not None and hnsw.efSearch < kk:
            # An HNSW beam narrower than k cannot return k good neighbours (measured: recall@1000 0.68 at
            # efSearch 128); widen it for this call only (thread-safe: the index is not mutated).
            import faiss

            scores, ids = index.search(q, kk, params=faiss.SearchParametersHNSW(efSearch=kk))
        else:
            scores, ids = index.search(q, kk)
        ids = ids.astype(np.int64, copy=False)
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = np.nan
        if kk < k:
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=np.nan)
        return ids, scores

    def auto_exact(self, k: int) -> bool:
        """Whether auto mode searches a top-``k`` exhaustively: N <= 16384 or k >= N / 8."""
        return int(k) * _EXACT_FRACTION >= self.ntotal or self.ntotal <= _EXACT_BELOW

    def recall_vs_exact(self, queries: np.ndarray, k: int, vectors: np.ndarray | None = None) -> float:
        """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k|, exact = IndexFlatIP over the same
        vectors (``vectors`` (N, D) if given, else the indexed ones)."""
        import faiss

        q = _as_matrix(queries, self.dim, "AnnIndex.recall_vs_exact: queries")
        if vectors is not None:
            exact = faiss.IndexFlatIP(self.dim)
            exact.add(_as_matrix(vectors, self.dim, "AnnIndex.recall_vs_exact: vectors"))
        else:
            exact = self._exact_index()
        kk = min(int(k), self.ntotal)
        _, truth = exact.search(q, kk)
        got, _ = self.search(q, kk, exact=False)
        return float(overlap_recall(got, truth).mean())

    # ---------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index with ``faiss.write_index`` (search parameters nprobe/efSearch are stored in it)."""
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, nprobe: int | None = None, ef_search: int | None = None) -> "AnnIndex":
        import faiss

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FAISS index file not found")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a readable FAISS index: {exc}") from None
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: expected an inner-product index, found metric {index.metric_type}")
        out = cls(index, _describe(index))
        out.set_search_params(nprobe=nprobe, ef_search=ef_search)
        return out


def _describe(index) -> str:
    import faiss

    idx = faiss.downcast_index(index)
    return type(idx).__name__


def faiss_downcast(index):
    import faiss

    return faiss.downcast_index(index)


def overlap_recall(got: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(B,) |got_b ∩ truth_b| / |truth_b| over valid (>= 0) ids, vectorized with sorted pair keys."""
    b = len(truth)
    n = int(max(got.max(initial=0), truth.max(initial=0))) + 2
    rows_t = np.repeat(np.arange(b), truth.shape[1])
    kt = rows_t * n + truth.ravel()
    valid_t = truth.ravel() >= 0
    kt = np.sort(kt[valid_t])
    rows_g = np.repeat(np.arange(b), got.shape[1])
    kg = rows_g * n + got.ravel()
    valid_g = got.ravel() >= 0
    hit = np.zeros(len(kg), dtype=bool)
    if len(kt):
        pos = np.minimum(np.searchsorted(kt, kg[valid_g]), len(kt) - 1)
        hit[valid_g] = kt[pos] == kg[valid_g]
    hits = np.bincount(rows_g[hit], minlength=b)
    denom = np.maximum((truth >= 0).sum(axis=1), 1)
    return hits / denom
