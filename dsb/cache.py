"""Where dsb keeps derived files that any run may reuse: the user's cache directory.

Probe sets (``dsb.stats.evalsets``), decoded datasets (``dsb.data.sources``) and
concept-erased training splits (``dsb.data.transforms.cached_erase_split``) are pure
functions of their inputs, so they are cached once per user rather than once per run
directory. The root is ``$XDG_CACHE_HOME/dsb`` (``~/.cache/dsb`` when unset); each kind of
file has its own subdirectory and its own environment variable that moves it elsewhere
(a shared file system for a sweep, say) or, set to ``none``, turns that cache off.

Every cache is safe under concurrent jobs the same way: a file is written to a temporary
name and renamed into place (``write_atomically``: a reader never sees a partial file),
and a process builds a missing file under an exclusive lock on ``<file>.lock``
(``build_lock``), so jobs that start together build it once and the others load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = [
    "DATA_CACHE_ENV",
    "ERASURE_CACHE_ENV",
    "PROBE_CACHE_ENV",
    "PROBE_CACHE_SUBDIR",
    "build_lock",
    "data_cache_dir",
    "erasure_cache_dir",
    "hash_array",
    "load_or_build",
    "probe_cache_dir",
    "resolve_probe_cache",
    "user_cache",
    "write_atomically",
]

PROBE_CACHE_ENV = "DSB_PROBE_CACHE"
DATA_CACHE_ENV = "DSB_DATA_CACHE"
ERASURE_CACHE_ENV = "DSB_ERASURE_CACHE"


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


# The probe-set cache under a data directory (``cache_dir: data_dir``).
PROBE_CACHE_SUBDIR = "dsb_probe_sets"


def resolve_probe_cache(option: str | os.PathLike | None, data_dir=None) -> Path | None:
    """The probe-set cache directory (None: no cache) that a ``cache_dir`` option names,
    the one meaning of it for every place that builds probe sets (the ``dsb_probes``
    evaluator's ``cache_dir``, ``data.synthetic.cache_dir``):

    * None: the user's cache, ``probe_cache_dir()``, shared by every run of the user;
    * ``"none"``: no cache;
    * ``"data_dir"``: ``<data_dir>/dsb_probe_sets``, a directory every node of a cluster
      sees (the user's cache when ``data_dir`` is None);
    * any other string: the directory itself.
    """
    if option is None:
        return probe_cache_dir()
    if str(option).lower() == "none":
        return None
    if str(option) == "data_dir":
        return probe_cache_dir() if data_dir is None else Path(data_dir) / PROBE_CACHE_SUBDIR
    return Path(option).expanduser()


def data_cache_dir() -> Path | None:
    """The decoded-dataset cache: ``$DSB_DATA_CACHE`` if set (``none``: no cache), else
    ``user_cache("decoded")``."""
    return _from_env(DATA_CACHE_ENV, "decoded")


def erasure_cache_dir() -> Path | None:
    """The erased-split cache: ``$DSB_ERASURE_CACHE`` if set (``none``: no cache), else
    ``user_cache("erased")``."""
    return _from_env(ERASURE_CACHE_ENV, "erased")


def hash_array(h, arr: np.ndarray, label: str = "") -> None:
    """Feed ``label``, the array's dtype and shape, then its bytes (C order) into the hash
    ``h`` (``hashlib.sha256()``): how every cache key here hashes an array, so two arrays
    with the same bytes but another dtype or shape never share a key."""
    arr = np.ascontiguousarray(arr)
    h.update(f"{label}{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a temporary file next to ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp's file is private (0600); a cache file is readable as a plain one would
        # be (the umask decides), so a cache on a shared disk serves other users too.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<path>.lock`` while one process builds ``path``.

    Jobs that start together and share the cache then build each file once: the first
    takes the lock and builds, the others wait and load its file. Where the directory
    cannot hold a lock file (read-only) or the file system has no ``flock``, every process
    builds for itself (``write_atomically`` still keeps files whole).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def load_or_build(
    path: Path, load: Callable[[], T | None], build: Callable[[], T], save: Callable[[T], None]
) -> tuple[T, bool]:
    """``(value, loaded)``: ``load()`` (None: not there), else, under ``build_lock(path)``,
    ``load()`` again (another process may have built it while this one waited) and only
    then ``build()`` and ``save(value)``. ``save`` handles its own errors: a cache that
    cannot be written should warn and let the run go on."""
    if (hit := load()) is not None:
        return hit, True
    with build_lock(path):
        if (hit := load()) is not None:
            return hit, True
        value = build()
        save(value)
        return value, False
