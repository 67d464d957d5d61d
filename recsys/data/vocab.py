"""External id <-> contiguous index, with an out-of-vocabulary slot.

Known ids map to ``0 .. n-1`` in the order given; any unseen id maps to ``oov == n``. Embedding tables
therefore have ``size == n + 1`` rows, and score matrices over the catalogue have ``n`` columns (no OOV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


class Vocab:
    """A frozen mapping of external ids (ints or strings) to indices ``0..n-1``; unseen ids -> ``n``."""

    def __init__(self, ids) -> None:
        index = pd.Index(pd.unique(pd.Series(ids)))
        if index.hasnans:
            raise ValueError("Vocab: ids contain a missing value (NaN/None)")
        self._index = index

    @classmethod
    def from_values(cls, *columns) -> "Vocab":
        """Vocabulary over the union of ``columns``, in order of first appearance."""
        parts = [pd.Series(np.asarray(c)) for c in columns if c is not None and len(c)]
        return cls(pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def oov(self) -> int:
        """Index of the out-of-vocabulary slot (== len(self))."""
        return len(self._index)

    @property
    def size(self) -> int:
        """Rows an embedding table needs: known ids plus the OOV slot."""
        return len(self._index) + 1

    @property
    def ids(self) -> np.ndarray:
        return self._index.to_numpy()

    def encode(self, ids) -> np.ndarray:
        """(N,) external ids -> (N,) int64 indices; unseen ids -> ``oov``."""
        idx = self._index.get_indexer(pd.Index(np.asarray(ids)))
        idx = idx.astype(np.int64, copy=False)
        idx[idx < 0] = self.oov
        return idx

    def decode(self, idx) -> np.ndarray:
        """(N,) indices -> (N,) external ids; the OOV index (or any out of range) is an error."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self._index)):
            raise IndexError(f"Vocab.decode: index out of range [0, {len(self._index)})")
        return self._index.to_numpy()[idx]

    def __contains__(self, ext_id) -> bool:
        return ext_id in self._index

    def save(self, path: str | Path) -> None:
        """Save as a one-column Parquet file (``id``); no pickle."""
        pd.DataFrame({"id": self._index.to_numpy()}).to_parquet(path, index=False)

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        df = pd.read_parquet(path)
        if list(df.columns) != ["id"]:
            raise ValueError(f"{path}: a vocabulary file has exactly one column 'id', found {list(df.columns)}")
        return cls(df["id"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._index.equals(other._index)

    def __repr__(self) -> str:
        return f"Vocab(n={len(self)})"
