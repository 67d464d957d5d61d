"""Atomic file and folder output, checksums.

A failed command must leave no half-written output: everything is written into a temporary sibling folder
which is renamed into place only when complete (``rename`` is atomic on one filesystem).

A run killed outright (``kill -9``, power loss) cannot remove its temporary folder, so every temporary folder
is held under an exclusive ``flock`` by the process writing it, and :func:`remove_stale` (called by the next
:func:`atomic_output_dir` on the same output, and by :func:`recsys.bundle.write_bundle`) removes leftovers that
are both older than ``STALE_AFTER_S`` and not locked: a live writer's folder is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

# a temporary folder older than this (modification time) and not locked by a live writer is a leftover
STALE_AFTER_S = 600.0


class OutputExistsError(FileExistsError):
    """The output folder exists and ``overwrite`` was not given."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask (``0o666 & ~umask``):
    for files made with ``tempfile.mkstemp`` (always 0600) before they are renamed into place."""
    return 0o666 & ~_umask()


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def lock_dir(path: str | Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on the folder ``path`` (released when it is closed or
    the process dies), or None when another open descriptor holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale(parent: str | Path, patterns: tuple[str, ...], max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the leftovers of killed runs in ``parent``: entries matching one of the glob ``patterns`` whose
    modification time is older than ``max_age_s`` seconds and (folders) whose ``flock`` no process holds.
    Returns what was removed; a folder being written (locked) or too recent is left alone."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    now = time.time()
    seen = set()
    for pattern in patterns:
        for p in sorted(parent.glob(pattern)):
            if p in seen:
                continue
            seen.add(p)
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if now - st.st_mtime < max_age_s:
                continue
            if p.is_symlink() or not p.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                removed.append(p)
                continue
            fd = lock_dir(p)
            if fd is None:  # a live writer holds it
                continue
            try:
                shutil.rmtree(p, ignore_errors=True)
            finally:
                os.close(fd)
            removed.append(p)
            logger.info("removed %s: left by a killed run (older than %.0f s, not locked)", p, max_age_s)
    return removed


def locked_tempdir(prefix: str, dir: str | Path | None = None) -> tuple[Path, int]:
    """``tempfile.mkdtemp`` and an exclusive ``flock`` on the new folder (the descriptor is returned; close it
    when the folder is gone or no longer needs protecting)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    fd = lock_dir(tmp)
    assert fd is not None, f"{tmp}: a fresh folder is locked by someone else"
    return tmp, fd


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out`` atomically, on failure it is removed.

    Refuses an existing ``out`` unless ``overwrite`` (checked before any work is done). The temporary folder
    (``.<name>.tmp-*``) is locked while it is written; stale ones of earlier killed runs on the same output
    are removed first (:func:`remove_stale`).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output folder exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, (f".{out.name}.tmp-*", f".{out.name}.old-*"))
    tmp, fd = locked_tempdir(f".{out.name}.tmp-", out.parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the output should get the usual permissions
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        if out.exists():
            trash, trash_fd = locked_tempdir(f".{out.name}.old-", out.parent)
            try:
                os.replace(out, trash / "old")
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                os.close(trash_fd)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_stage_meta(path: str | Path, what: str, format_version: int) -> dict:
    """A saved stage's JSON description, refused with the file named when absent or of another format
    version (``what`` says which kind of stage, e.g. "pre-ranker")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; not a saved {what}")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format_version") != format_version:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r} is not {format_version}")
    return meta
