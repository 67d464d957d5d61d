"""recsys: a staged ranking and recommender engine (retrieval -> pre-ranking -> heavy ranking; see README).

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is already set: OpenMP's default
spin-waiting makes multi-threaded LightGBM / torch crawl on shared or busy cores (measured 25x slower), and
passive waiting costs nothing measurable when the cores are free. It only takes effect when recsys is
imported before torch, LightGBM or FAISS initialise OpenMP (the command line always is).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
