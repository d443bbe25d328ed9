"""Where dsb keeps derived files that any run may reuse: the user's cache directory.

Probe sets (``dsb.stats.evalsets``) and decoded datasets (``dsb.data.sources``) are pure
functions of their inputs, so they are cached once per user rather than once per run
directory. The root is ``$XDG_CACHE_HOME/dsb`` (``~/.cache/dsb`` when unset); each kind of
file has its own subdirectory and its own environment variable that moves it elsewhere
(a shared file system for a sweep, say) or, set to ``none``, turns that cache off.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_CACHE_ENV", "PROBE_CACHE_ENV", "data_cache_dir", "probe_cache_dir", "user_cache"]

PROBE_CACHE_ENV = "DSB_PROBE_CACHE"
DATA_CACHE_ENV = "DSB_DATA_CACHE"


def user_cache(subdir: str) -> Path:
    """``$XDG_CACHE_HOME/dsb/<subdir>``, else ``~/.cache/dsb/<subdir>``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dsb" / subdir


def _from_env(var: str, subdir: str) -> Path | None:
    value = os.environ.get(var)
    if value:
        return None if value.lower() == "none" else Path(value).expanduser()
    return user_cache(subdir)


def probe_cache_dir() -> Path | None:
    """The default probe-set cache: ``$DSB_PROBE_CACHE`` if set (``none``: no cache), else
    ``user_cache("probe_sets")``."""
    return _from_env(PROBE_CACHE_ENV, "probe_sets")


def data_cache_dir() -> Path | None:
    """The decoded-dataset cache: ``$DSB_DATA_CACHE`` if set (``none``: no cache), else
    ``user_cache("decoded")``."""
    return _from_env(DATA_CACHE_ENV, "decoded")
