"""Deterministic, resumable, per-host-sharded batches.

The order comes from grain's ``MapDataset`` (seeded shuffle, reshuffled every epoch,
batches running across epoch boundaries), which is random-access: batch ``s`` is a pure
function of (seed, s). So the iterator's whole state is the next step number, resuming is
exact, and the global batch is the same whatever the number of hosts or devices. Host
``h`` of ``p`` reads only its slice ``[h * b / p, (h + 1) * b / p)`` of each global batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import grain
import numpy as np

__all__ = ["BatchSampler", "Prefetcher"]


class BatchSampler:
    """Batch ``step`` of a host-resident dataset, this host's part of the global batch."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        n = len(next(iter(arrays.values())))
        if global_batch_size % process_count:
            raise ValueError(
                f"data.batch_size={global_batch_size} is not divisible by the "
                f"{process_count} processes"
            )
        if n == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.arrays = arrays
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.process_count = process_count
        self._indices = (
            grain.MapDataset.range(n).seed(seed).shuffle().repeat(None).batch(self.local_batch_size)
        )

    def indices(self, step: int) -> np.ndarray:
        """Example indices of this host's part of global batch ``step``."""
        return np.asarray(self._indices[step * self.process_count + self.process_index])

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        idx = self.indices(step)
        return {k: v[idx] for k, v in self.arrays.items()}


class Prefetcher:
    """Runs ``make(step)`` for steps ``start, start + 1, ...`` a few steps ahead in a thread.

    ``make`` typically gathers the host batch and puts it on the devices, so host work
    overlaps the device step. Exceptions in the thread surface in the consumer.
    """

    def __init__(self, make: Callable[[int], object], start: int, stop: int, depth: int = 2):
        self._make = make
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start, stop), daemon=True)
        self._thread.start()

    def _run(self, start: int, stop: int) -> None:
        try:
            for step in range(start, stop):
                item = (step, self._make(step), None)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put((None, None, StopIteration()))
        except BaseException as e:  # surfaced in __next__
            self._queue.put((None, None, e))

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        step, item, err = self._queue.get()
        if isinstance(err, StopIteration):
            self._queue.put((None, None, err))  # stay exhausted
            raise StopIteration
        if err is not None:
            raise err
        return step, item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
