"""Item graph construction (co-engagement + explicit links), PageRank, personalized PageRank and the graph
candidate source. See :mod:`recsys.graph.item_graph` and :mod:`recsys.graph.pagerank`."""

from recsys.graph.item_graph import (
    GraphConfig,
    build_item_graph,
    co_engagement,
    graph_files,
    load_graph,
    save_graph,
)
from recsys.graph.pagerank import (
    GraphSource,
    PageRankConvergenceError,
    PPRConfig,
    PPRMethod,
    Transition,
    pagerank,
    personalized_pagerank,
    recency_weights,
    top_ppr,
)

__all__ = [
    "GraphConfig",
    "GraphSource",
    "PPRConfig",
    "PPRMethod",
    "PageRankConvergenceError",
    "Transition",
    "build_item_graph",
    "co_engagement",
    "graph_files",
    "load_graph",
    "pagerank",
    "personalized_pagerank",
    "recency_weights",
    "save_graph",
    "top_ppr",
]
