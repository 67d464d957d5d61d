"""The pre-ranker stage: LightGBM lambdarank over the shared features (:mod:`recsys.features`)."""

from recsys.prerank.stage import PrerankConfig, PrerankStage, build_ranking_data

__all__ = ["PrerankConfig", "PrerankStage", "build_ranking_data"]
