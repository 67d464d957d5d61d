"""The catalogue: user and item vocabularies shared by every stage, baseline and evaluator, and the
builders that turn interaction tables into :class:`~recsys.types.Requests` and histories.

* Items: every item of the ``items`` table (in its row order), then any item seen only in interactions.
  The catalogue is known up front (an item's id is not a leak); what a model may learn about it is limited
  by the window it trains on.
* Users: the users that appear in the given training interactions (in order of first appearance). Users
  unseen there map to the OOV slot and are cold at ranking time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from recsys.data.schema import Dataset, Role
from recsys.data.vocab import Vocab
from recsys.types import Ragged, Requests


@dataclasses.dataclass
class Catalog:
    users: Vocab
    items: Vocab
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"

    @classmethod
    def from_dataset(cls, ds: Dataset, train: pd.DataFrame | None = None) -> "Catalog":
        """Items from ``ds`` (items table first); users from ``train`` (default: all interactions)."""
        sch = ds.schema.tables["interactions"]
        ucol, icol, tcol = (sch.names(r)[0] for r in (Role.USER_ID, Role.ITEM_ID, Role.TIMESTAMP))
        item_cols = []
        if ds.items is not None:
            item_cols.append(ds.items[ds.schema.tables["items"].names(Role.ITEM_ID)[0]].to_numpy())
        item_cols.append(ds.interactions[icol].to_numpy())
        train = ds.interactions if train is None else train
        return cls(Vocab.from_values(train[ucol].to_numpy()), Vocab.from_values(*item_cols), ucol, icol, tcol)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def encode(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index (R,), item index (R,), timestamp (R,)) of an interaction table's rows."""
        return (
            self.users.encode(df[self.user_col].to_numpy()),
            self.items.encode(df[self.item_col].to_numpy()),
            df[self.time_col].to_numpy(dtype=np.int64),
        )

    def histories(self, user_ids: np.ndarray, past: pd.DataFrame) -> Ragged:
        """For each of B external ``user_ids``, the catalogue items of their rows in ``past``, oldest first.

        ``past`` should already be restricted to engagements (e.g. positive_label == 1) and to times before
        the requests. Items outside the catalogue are dropped. Vectorized: one sort, one bincount.
        """
        user_ids = np.asarray(user_ids)
        row = pd.Index(user_ids).get_indexer(past[self.user_col].to_numpy())
        items = self.items.encode(past[self.item_col].to_numpy())
        times = past[self.time_col].to_numpy(dtype=np.int64)
        keep = (row >= 0) & (items < self.items.oov)
        row, items, times = row[keep], items[keep], times[keep]
        order = np.lexsort((times, row))
        row, items, times = row[order], items[order], times[order]
        counts = np.bincount(row, minlength=len(user_ids))
        return Ragged(np.r_[0, np.cumsum(counts)].astype(np.int64), items, times)

    def requests(
        self,
        user_ids: np.ndarray,
        timestamps: np.ndarray,
        past: pd.DataFrame,
        exclude_seen: bool = True,
        context: dict[str, np.ndarray] | None = None,
    ) -> Requests:
        """Requests for B external users at ``timestamps``, with histories (and exclusions) from ``past``."""
        hist = self.histories(user_ids, past)
        return Requests(
            users=self.users.encode(user_ids),
            timestamps=np.asarray(timestamps, dtype=np.int64),
            history=hist,
            exclude=hist if exclude_seen else None,
            context=dict(context or {}),
            user_ids=np.asarray(user_ids),
        )


def positives(df: pd.DataFrame, label: str) -> pd.DataFrame:
    """The engagement rows of an interaction table (``label`` > 0)."""
    return df[df[label].to_numpy() > 0]
