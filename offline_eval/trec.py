"""TREC qrels and run files: strict readers, writers, and conversion to :func:`offline_eval.metrics.compute`.

Formats (whitespace-separated, one judgement / one retrieved document per line; blank lines are skipped):

- qrels: ``qid iter docid rel`` (``iter`` is ignored, usually ``0``; ``rel`` an integer, > 0 = relevant with
  gain ``rel``; 0 or negative = judged non-relevant, gain 0).
- run: ``qid Q0 docid rank score tag`` (``Q0`` and ``tag`` are ignored; ``rank`` must be an integer but, as
  in ``trec_eval``, it is ignored for ordering).

Conventions of ``trec_eval`` (verified against ``pytrec_eval`` in ``tests/test_trec.py``):

- Order within a query: score descending; ties broken by document id compared as a string, descending
  (``strcmp`` order; ``"d9"`` ranks above ``"d10"``). The ``rank`` column is ignored. ``trec_eval`` holds
  scores as single-precision ``float``: two scores that round to the same float32 are tied (0.5 and
  0.5 + 1e-12 are, and the document id decides), so the order compares ``float32(score)``, not the float64
  read from the file (:func:`trec_score_key`).
- Evaluated queries: those in the run that have at least one judgement in the qrels (a query whose
  judgements are all non-relevant is evaluated and scores 0). Run queries without judgements and judged
  queries absent from the run are left out of the per-query values and of the means (``trec_eval`` without
  ``-c``).
- Negative relevance is judged non-relevant with gain 0 (``pytrec_eval`` gives the same nDCG as for 0).

Errors (malformed line, wrong field count, non-numeric or NaN score, non-integer relevance, duplicate
(query, document) pair) raise ValueError naming the file and the 1-based line number.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from recsys.io import atomic_write_text

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]  # qid -> docid -> relevance
Run = dict[str, dict[str, float]]  # qid -> docid -> score


def _lines(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 text") from None
            fields = line.split()
            if fields:
                yield lineno, fields


def read_qrels(path: str | Path) -> Qrels:
    """Read a TREC qrels file ``qid iter docid rel`` into ``{qid: {docid: rel}}``."""
    qrels: Qrels = {}
    for lineno, f in _lines(path):
        if len(f) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 fields 'qid iter docid rel', got {len(f)}: {' '.join(f)!r}")
        qid, _, doc, rel_text = f
        try:
            rel = int(rel_text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: relevance {rel_text!r} is not an integer") from None
        docs = qrels.setdefault(qid, {})
        if doc in docs:
            raise ValueError(f"{path}:{lineno}: duplicate judgement for query {qid!r}, document {doc!r}")
        docs[doc] = rel
    return qrels


def read_run(path: str | Path) -> Run:
    """Read a TREC run file ``qid Q0 docid rank score tag`` into ``{qid: {docid: score}}``."""
    run: Run = {}
    for lineno, f in _lines(path):
        if len(f) != 6:
            raise ValueError(
                f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', got {len(f)}: {' '.join(f)!r}"
            )
        qid, _, doc, rank_text, score_text, _ = f
        try:
            int(rank_text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: rank {rank_text!r} is not an integer") from None
        try:
            score = float(score_text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: score {score_text!r} is not a number") from None
        if math.isnan(score):
            raise ValueError(f"{path}:{lineno}: score is NaN")
        docs = run.setdefault(qid, {})
        if doc in docs:
            raise ValueError(f"{path}:{lineno}: duplicate document {doc!r} for query {qid!r}")
        docs[doc] = score
    return run


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``{qid: {docid: rel}}`` as ``qid 0 docid rel`` lines (atomically)."""
    out = []
    for qid, docs in qrels.items():
        _check_id(qid, "query id")
        for doc, rel in docs.items():
            _check_id(doc, "document id")
            if isinstance(rel, bool) or int(rel) != rel:
                raise ValueError(f"relevance of query {qid!r}, document {doc!r} must be an integer, got {rel!r}")
            out.append(f"{qid} 0 {doc} {int(rel)}\n")
    atomic_write_text(path, "".join(out))


def write_run(
    path: str | Path,
    query_ids: Sequence[str],
    ranked_doc_ids: Sequence[Sequence[object]] | np.ndarray,
    scores: Sequence[Sequence[float]] | np.ndarray,
    tag: str = "recsys",
) -> None:
    """Write ranked lists as ``qid Q0 docid rank score tag`` lines (atomically).

    Args:
        query_ids: ``(B,)`` query ids.
        ranked_doc_ids: ``(B, K)`` document ids in rank order; ``None``, ``""`` or a negative integer marks
            padding (fewer than K documents) and is skipped.
        scores: ``(B, K)`` scores, non-increasing along each row. Scores are written with full precision
            (``repr``). Note that ``trec_eval`` re-sorts by float32 score and breaks ties by document id, so
            give scores distinct in float32 if the order of tied documents matters.
        tag: run name (no whitespace).
    """
    _check_id(tag, "run tag")
    if len(query_ids) != len(ranked_doc_ids) or len(query_ids) != len(scores):
        raise ValueError(
            f"query_ids ({len(query_ids)}), ranked_doc_ids ({len(ranked_doc_ids)}) and scores ({len(scores)}) "
            "must have one row per query"
        )
    out = []
    for qid, docs, row_scores in zip(query_ids, ranked_doc_ids, scores):
        qid = str(qid)
        _check_id(qid, "query id")
        if len(docs) != len(row_scores):
            raise ValueError(f"query {qid!r}: {len(docs)} document ids but {len(row_scores)} scores")
        rank = 0
        for doc, score in zip(docs, row_scores):
            if doc is None or (isinstance(doc, str) and doc == "") or (
                isinstance(doc, (int, np.integer)) and doc < 0
            ):
                continue
            doc = str(doc)
            _check_id(doc, "document id")
            score = float(score)
            if math.isnan(score):
                raise ValueError(f"query {qid!r}, document {doc!r}: score is NaN")
            rank += 1
            out.append(f"{qid} Q0 {doc} {rank} {score!r} {tag}\n")
    atomic_write_text(path, "".join(out))


def _check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} must be a non-empty string without whitespace")


def trec_score_key(scores: np.ndarray) -> np.ndarray:
    """The scores as ``trec_eval`` compares them: rounded to float32 (nearest; beyond its range: +-inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(scores, dtype=np.float64).astype(np.float32)


def rank_order(docs: Mapping[str, float]) -> list[str]:
    """One query's documents in ``trec_eval`` order: float32 score descending, then document id descending."""
    keys = trec_score_key(np.fromiter(docs.values(), dtype=np.float64, count=len(docs)))
    return [d for d, _ in sorted(zip(docs, keys.tolist()), key=lambda kv: (kv[1], kv[0]), reverse=True)]


@dataclass(frozen=True)
class EvalArrays:
    """Inputs of :func:`offline_eval.metrics.compute` built from a qrels and a run.

    Attributes:
        query_ids: ``(B,)`` evaluated query ids, sorted as strings.
        ranked: ``(B, K)`` int64 document indices in ``trec_eval`` order, -1 = padding.
        qrels: ``(B, N)`` csr of gains > 0.
        doc_ids: ``(N,)`` document id of each index.
        n_run_only: run queries without any judgement (not evaluated).
        n_qrels_only: judged queries absent from the run (not evaluated).
    """

    query_ids: tuple[str, ...]
    ranked: np.ndarray
    qrels: sp.csr_matrix
    doc_ids: np.ndarray
    n_run_only: int
    n_qrels_only: int


def to_arrays(qrels: Qrels, run: Run, depth: int | None = None) -> EvalArrays:
    """Convert parsed qrels and run to ``compute`` inputs, with ``trec_eval``'s ordering and query set.

    Document indices follow the sorted order of the document id strings, so one ``np.lexsort`` over
    (query, -float32(score), -index) gives every query's ``trec_eval`` order at once.

    Args:
        depth: keep only the top ``depth`` documents of each query (after ordering); ``None`` keeps all.
    """
    if depth is not None and depth <= 0:
        raise ValueError(f"depth must be >= 1, got {depth}")
    qids = sorted(q for q in run if q in qrels)
    n_run_only = sum(1 for q in run if q not in qrels)
    n_qrels_only = sum(1 for q in qrels if q not in run)
    B = len(qids)
    run_counts = np.fromiter((len(run[q]) for q in qids), dtype=np.int64, count=B)
    rel_docs = [[d for d, r in qrels[q].items() if r > 0] for q in qids]
    rel_counts = np.fromiter((len(x) for x in rel_docs), dtype=np.int64, count=B)
    run_docs = [d for q in qids for d in run[q]]
    run_scores = np.fromiter((s for q in qids for s in run[q].values()), dtype=np.float64, count=len(run_docs))
    vocab: dict[str, int] = {}  # document id -> first-seen code
    first_seen = np.fromiter(
        (vocab.setdefault(d, len(vocab)) for d in itertools.chain(run_docs, (d for x in rel_docs for d in x))),
        dtype=np.int64,
        count=len(run_docs) + int(rel_counts.sum()),
    )
    names = list(vocab)
    by_string = sorted(range(len(names)), key=names.__getitem__)  # code point order == strcmp on UTF-8
    string_rank = np.empty(len(names), dtype=np.int64)
    string_rank[by_string] = np.arange(len(names), dtype=np.int64)
    codes = string_rank[first_seen]
    doc_ids = np.array([names[i] for i in by_string], dtype=object)
    run_codes, rel_codes = codes[: len(run_docs)], codes[len(run_docs) :]

    run_rows = np.repeat(np.arange(B, dtype=np.int64), run_counts)
    # lexsort: last key is primary -> query, then float32 score desc, then doc id desc (codes: string order)
    order = np.lexsort((-run_codes, -trec_score_key(run_scores), run_rows))
    K = int(run_counts.max()) if B else 0
    if depth is not None:
        K = min(K, depth)
    ranked = np.full((B, K), -1, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(run_counts)[:-1])) if B else np.zeros(0, dtype=np.int64)
    pos = np.arange(run_rows.size, dtype=np.int64) - starts[run_rows]  # rows stay grouped after lexsort
    keep = pos < K
    ranked[run_rows[keep], pos[keep]] = run_codes[order][keep]

    rel_rows = np.repeat(np.arange(B, dtype=np.int64), rel_counts)
    gains = np.fromiter((qrels[q][d] for q, x in zip(qids, rel_docs) for d in x), dtype=np.float64, count=rel_rows.size)
    q = sp.csr_matrix((gains, (rel_rows, rel_codes)), shape=(B, max(len(doc_ids), 1)))
    if n_run_only or n_qrels_only:
        logger.info(
            "evaluating %d queries; %d run queries have no judgements and %d judged queries are not in the run "
            "(both left out, as trec_eval does)", B, n_run_only, n_qrels_only,
        )
    return EvalArrays(tuple(qids), ranked, q, doc_ids, n_run_only, n_qrels_only)
