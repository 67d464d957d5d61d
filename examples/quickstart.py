"""Train the engine from a pandas DataFrame, load it and rank, and evaluate a ranker of your own (about 20 s)."""
import sys

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import api
from recsys.types import Results, top_k

out = sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart"
rng = np.random.default_rng(0)  # a listening log: 200 users, 150 songs in 6 genres, play counts, times
n = 6_000
user = rng.integers(0, 200, n)
song = np.where(rng.random(n) < 0.8, (user % 6) * 25 + rng.integers(0, 25, n), rng.integers(0, 150, n))
df = pd.DataFrame({"user": user, "song": song, "ts": 1_700_000_000 + np.sort(rng.integers(0, 90 * 86400, n)),
                   "plays": rng.geometric(0.2, n)})
ds = api.dataset(df, user="user", item="song", timestamp="ts", labels={"plays": "count"})

small = ["retrieval.two_tower.max_epochs=3", "retrieval.two_tower.dim=16", "retrieval.two_tower.threads=1",
         "prerank.n_estimators=30", "rank.train.max_epochs=2", "eval.bootstrap_samples=100"]
bundle = api.train(ds, f"{out}/bundle", overrides=small)
engine = api.load(bundle.path)  # checksums verified: the same funnel `recsys serve` runs
print(engine.rank([0, 1], k=5, history=df.rename(columns={"user": "user_id", "song": "item_id", "ts": "timestamp"})))


class CoListened:
    """A ranker of your own: score(u, i) = how often i was played by the users who played u's songs."""

    def fit(self, train, catalog, schema):  # the interactions before the test window, the catalogue
        items = catalog.items.encode(train[catalog.item_col].to_numpy())
        users = pd.factorize(train[catalog.user_col])[0]
        x = sp.csr_matrix((np.ones(len(items)), (users, items)), shape=(users.max() + 1, catalog.n_items + 1))
        self.co = (x.T @ x).tocsr()[:, : catalog.n_items]  # (N + 1, N): the OOV row is all zero
        return self

    def rank(self, requests, k):  # the ranking contract: Requests (catalogue indices) -> Results
        scores = (requests.history.to_csr(self.co.shape[0]) @ self.co).toarray()  # (B, N)
        items, vals = top_k(scores, k, requests.exclude)
        return Results(items=items, scores=vals)


report = api.evaluate(ds, {"engine": engine.engine, "colistened": CoListened()}, f"{out}/report", overrides=small,
                      baselines=["popularity", "itemknn"], overwrite=True)
for name, m in report["systems"].items():
    print(f"{name:12s} ndcg@10 {m['ndcg@10']:.4f}  recall@100 {m['recall@100']:.4f}")
