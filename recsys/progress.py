"""Progress bars for long loops (tqdm), switched off by ``--quiet`` and when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterable[T]:
    """Wrap ``iterable`` in a progress bar when enabled and stderr is a terminal."""
    disable = not _enabled or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, leave=False)
