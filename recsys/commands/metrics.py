"""``recsys metrics``: evaluate a TREC run file against a qrels file, ``trec_eval``-compatible.

    recsys metrics --qrels FILE --run FILE [--metrics ndcg@10,mrr@10,map@100] [--per-query] [--out FILE]

Prints (or writes) JSON: ``{"metrics": {name: mean}, "n_queries": B, "per_query": {qid: {name: value}}}``
(``per_query`` only with ``--per-query``), plus ``n_run_queries_without_qrels`` and
``n_qrels_queries_without_run``.

Queries averaged: those in the run that have at least one judgement in the qrels, like ``trec_eval`` without
``-c`` (and ``pytrec_eval``); a judged query with no relevant document counts as 0. Every metric ranks by
score rounded to float32 (``trec_eval`` stores scores as ``float``), ties broken by document id, descending,
as ``trec_eval`` does. ``mrr@k`` equals ``trec_eval``'s ``recip_rank`` on the run
cut at ``k``; the other metrics map to ``ndcg_cut_k``, ``map_cut_k``, ``recall_k``, ``P_k`` and
``success_k``. See :mod:`offline_eval.trec` and :mod:`offline_eval.metrics`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from offline_eval import metrics as M
from offline_eval import trec
from recsys.io import write_json

logger = logging.getLogger(__name__)

DEFAULT_METRICS = "ndcg@10,mrr@10,map@100,recall@100"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "metrics",
        help="evaluate a TREC run against qrels (trec_eval conventions)",
        description=__doc__.split("\n\n", 1)[0],
    )
    p.add_argument("--qrels", required=True, help="TREC qrels file: 'qid iter docid rel' per line")
    p.add_argument("--run", required=True, help="TREC run file: 'qid Q0 docid rank score tag' per line")
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma-separated metrics name@k, from {', '.join(f'{m}@k' for m in M.METRICS)} "
        f"(default {DEFAULT_METRICS})",
    )
    p.add_argument("--per-query", action="store_true", help="also report every query's values")
    p.add_argument("--out", help="write the JSON here instead of standard output")
    p.set_defaults(func=run_metrics)


def parse_metric_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--metrics: no metric given; expected e.g. {DEFAULT_METRICS}")
    for n in names:
        M.parse_metric(n)  # raises ValueError listing the supported metrics
    if len(set(names)) != len(names):
        raise ValueError(f"--metrics: {text!r} lists a metric twice")
    return names


def evaluate_files(qrels_path: str, run_path: str, metric_names: list[str], per_query: bool = False) -> dict:
    """The command's JSON document for a qrels file and a run file."""
    qrels = trec.read_qrels(qrels_path)
    run = trec.read_run(run_path)
    depth = max(M.parse_metric(n)[1] for n in metric_names)
    arrays = trec.to_arrays(qrels, run, depth=depth)
    values = M.compute(arrays.ranked, arrays.qrels, metric_names)
    n = len(arrays.query_ids)
    if n == 0:
        logger.warning("no query of the run has judgements in the qrels; nothing to average")
    doc = {
        "metrics": {m: (float(v.mean()) if n else None) for m, v in values.items()},
        "n_queries": n,
        "n_run_queries_without_qrels": arrays.n_run_only,
        "n_qrels_queries_without_run": arrays.n_qrels_only,
    }
    if per_query:
        doc["per_query"] = {
            qid: {m: float(values[m][i]) for m in metric_names} for i, qid in enumerate(arrays.query_ids)
        }
    return doc


def run_metrics(args: argparse.Namespace) -> int:
    names = parse_metric_list(args.metrics)
    doc = evaluate_files(args.qrels, args.run, names, per_query=args.per_query)
    if args.out:
        write_json(args.out, doc)
        logger.info("wrote %s (%d queries)", args.out, doc["n_queries"])
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 0
