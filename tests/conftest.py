"""Test-wide settings: quiet OpenMP spinning on shared cores, one torch thread."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / lightgbm / faiss initialise OpenMP
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
