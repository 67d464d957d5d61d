"""Which split windows each funnel stage learns from (the as-of cut points of its training rows).

The candidate stage (retrieval) trains on the split's first window and early-stops on the second; each scoring
stage trains on the windows of its funnel entry (``engine.funnel[i].windows``), by default the one window of
its name (or, when the split has no window of that name, positionally: the i-th scoring stage the (i+1)-th
window); the last window is the test window. Several windows are several cut points: the stage's rows are
built at the start of each with the upstream and the point-in-time features as of that window
(:mod:`recsys.training`).
"""

from __future__ import annotations

from recsys.configlib import ConfigError
from recsys.data.split import Split

__all__ = ["RETRIEVAL", "stage_windows", "train_windows"]

RETRIEVAL = "retrieval"  # the candidate stage's window key in stage_windows()


def stage_windows(split: Split, engine=None) -> dict[str, str]:
    """Which window each funnel stage trains on: the candidate stage the first (``"retrieval"``; early stopping
    on the second, ``"retrieval_valid"``), each scoring stage the window of its name, or positionally (the
    i-th scoring stage the (i+1)-th window) when the split has no window of that name, or the last of its
    ``windows`` when the funnel lists them (:func:`train_windows`); ``"test"`` the last. Windows must follow
    the funnel's order and precede the test window."""
    fixed, stages = _windows(split, engine)
    return {**fixed, **{name: ws[-1] for name, ws in stages.items()}}


def train_windows(split: Split, engine=None) -> dict[str, list[str]]:
    """Every window (as-of cut point) each scoring stage learns from, in time order: its funnel entry's
    ``windows``, or the one window of :func:`stage_windows`. Each lies after the candidate stage's window and
    before the test window; a stage's last window follows its upstream stages' last windows (so the shipped
    upstream serves it there), and its first follows their first (so at each of its cut points an upstream
    trained only on earlier windows exists)."""
    return _windows(split, engine)[1]


def _windows(split: Split, engine) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(the candidate stage's and the test window's keys -> window, each scoring stage -> its windows)."""
    from recsys.configlib import EngineConfig

    engine = engine or EngineConfig()
    names = split.names
    if len(names) < 3:
        raise ConfigError(f"split.windows: the engine needs at least 3 windows (train, ..., test), got {names}")
    fixed = {RETRIEVAL: names[0], "retrieval_valid": names[1], "test": names[-1]}
    out: dict[str, list[str]] = {}
    prev_first = prev_last = 0
    for i, f in enumerate(engine.funnel[1:], start=1):
        name = f.stage
        if f.windows:
            unknown = [w for w in f.windows if w not in names]
            if unknown:
                raise ConfigError(f"engine.funnel[{i}] ({name}).windows: unknown window(s) {unknown}; split "
                                  f"windows: {names}")
            ws = list(f.windows)
            pos = [names.index(w) for w in ws]
            if pos != sorted(pos):
                raise ConfigError(f"engine.funnel[{i}] ({name}).windows: must be in time order (as in "
                                  f"split.windows {names}), got {ws}")
            if not 0 < pos[0] or pos[-1] >= len(names) - 1:
                raise ConfigError(f"engine.funnel[{i}] ({name}).windows: every window must lie after the "
                                  f"candidate stage's {names[0]!r} and before the test window {names[-1]!r}, "
                                  f"got {ws}")
            if pos[-1] <= prev_last or (i > 1 and pos[0] <= prev_first):
                raise ConfigError(
                    f"engine.funnel[{i}] ({name}).windows: its first and last windows must come after its upstream "
                    f"stage's first and last (an upstream trained on earlier windows only must exist at each of "
                    f"its cut points), got {ws}; windows: {names}, funnel: {list(engine.sizes)}")
        else:
            w = name if name in names else (names[i] if i < len(names) else None)
            p = names.index(w) if w is not None else -1
            if not 0 < p < len(names) - 1 or p <= prev_last:
                raise ConfigError(
                    f"split.windows: funnel stage {name!r} needs its own training window after its upstream's and "
                    f"before the test window (a window named {name!r}); windows: {names}, funnel: "
                    f"{list(engine.sizes)}")
            ws, pos = [w], [p]
        out[name] = ws
        prev_first, prev_last = pos[0], pos[-1]
    return fixed, out
