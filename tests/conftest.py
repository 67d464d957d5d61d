"""Test-wide settings: quiet OpenMP spinning on shared cores, one torch thread; the service tests' bundle."""

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / lightgbm / faiss initialise OpenMP
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def serving_bundle(tmp_path_factory):
    """A bundle trained once per session on the tiny synthetic world (tests/serving_support.make_bundle)."""
    from serving_support import make_bundle

    return make_bundle(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def serving_engine(serving_bundle):
    from recsys.training import load_engine

    return load_engine(serving_bundle)
