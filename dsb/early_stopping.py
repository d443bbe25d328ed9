"""Early stopping on held-out examples of the (erased) training split.

``EarlyStopping`` is built by the trainer when ``train.early_stopping.val_indices`` is set.
At every checkpoint step it measures the validation examples' mean cross-entropy (nats)
and, with it, every ``report_indices`` subset (summed cross-entropy in bits, mean in nats).
The run stops after ``patience`` evaluations in a row without a decrease of more than
``min_delta`` below the best. ``<run dir>/early_stopping.json`` holds the history, the best
step and the report values of the best-validation model; it is rewritten at every
evaluation, so a resumed run restores the history up to its checkpoint.

Whenever the validation loss improves, the per-example code lengths of every report set
go to ``<run dir>/early_stopping_bits/step_<step>.npz`` (``<name>_indices`` and
``<name>_bits``: cross-entropy in bits, float64, in the order of the report indices), so
what the best-validation model charged each example survives the deletion of its
checkpoint. One file per improving step (a few kB each): a resumed run drops the history
after its checkpoint, and the best step before it keeps its file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dsb.config import EarlyStoppingConfig

__all__ = ["BITS_DIR", "EarlyStopping", "cross_entropy_nats", "report_bits_path"]

BITS_DIR = "early_stopping_bits"


def report_bits_path(run_dir: Path, step: int) -> Path:
    """Where ``EarlyStopping`` saves the per-example report code lengths of ``step``."""
    return Path(run_dir) / BITS_DIR / f"step_{step:08d}.npz"


def cross_entropy_nats(logits_NxK: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy ``-log p(y | x)`` in nats, ``[n]``, computed in float64."""
    z = np.asarray(logits_NxK, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return log_norm - z[np.arange(len(z)), np.asarray(labels_N)]


class EarlyStopping:
    """The early-stopping state of one run (see the module docstring).

    ``data``: the whole training split as sampled (``RunContext.full_train_data``);
    ``resume_step``: the step the run resumes from (history at later or equal steps is
    dropped, since those evaluations are redone).
    """

    def __init__(
        self,
        cfg: EarlyStoppingConfig,
        data: dict[str, np.ndarray],
        run_dir: Path,
        train_indices: np.ndarray | None,
        resume_step: int = 0,
        write: bool = True,
    ):
        from dsb.data.pipeline import load_indices

        n = len(data["label"])
        self.cfg, self.path, self.write = cfg, Path(run_dir) / "early_stopping.json", write
        val = load_indices(cfg.val_indices, n, "train.early_stopping.val_indices")
        if train_indices is not None and np.intersect1d(val, train_indices).size:
            raise ValueError(
                "train.early_stopping.val_indices: overlaps data.train_indices; the "
                "validation examples must be held out"
            )
        self.sets = {"val": val} | {
            name: load_indices(p, n, f"train.early_stopping.report_indices.{name}")
            for name, p in cfg.report_indices.items()
        }
        self.data = data
        self.history: list[dict] = []
        if resume_step > 0 and self.path.exists():
            old = json.loads(self.path.read_text())["history"]
            self.history = [h for h in old if h["step"] < resume_step]

    @property
    def best(self) -> dict | None:
        """The last history entry that improved: its validation loss fell more than
        ``min_delta`` below the best before it (the first evaluation always improves)."""
        improved = [h for h in self.history if h["improved"]]
        return improved[-1] if improved else None

    @property
    def evals_since_best(self) -> int:
        best = self.best
        return 0 if best is None else sum(h["step"] > best["step"] for h in self.history)

    @property
    def stopped(self) -> bool:
        return self.evals_since_best >= self.cfg.patience

    def evaluate(self, step: int, predict: Callable[[np.ndarray], np.ndarray]) -> dict:
        """Measure every set with ``predict(x) -> logits`` at ``step``; returns the
        ``early_stopping/...`` metrics (``stopped`` is 1.0 once patience ran out)."""
        entry: dict = {"step": step}
        bits = {}
        for name, idx in self.sets.items():
            ce = cross_entropy_nats(predict(self.data["image"][idx]), self.data["label"][idx])
            bits[f"{name}_indices"] = np.asarray(idx)
            bits[f"{name}_bits"] = ce / math.log(2)
            entry[f"{name}/loss"] = float(ce.mean())
            entry[f"{name}/sum_bits"] = math.fsum(bits[f"{name}_bits"])
            entry[f"{name}/count"] = len(idx)
        best = self.best
        entry["improved"] = (
            best is None or entry["val/loss"] < best["val/loss"] - self.cfg.min_delta
        )
        if entry["improved"] and self.write and len(self.sets) > 1:
            path = report_bits_path(self.path.parent, step)
            path.parent.mkdir(exist_ok=True)
            report = {k: v for k, v in bits.items() if k not in ("val_indices", "val_bits")}
            np.savez(path, step=step, **report)
        self.history.append(entry)
        self._save()
        out = {f"early_stopping/{k}": float(v) for k, v in entry.items() if k != "step"}
        return out | {"early_stopping/stopped": float(self.stopped)}

    def _save(self) -> None:
        if not self.write:
            return
        best = self.best
        record = {
            "patience": self.cfg.patience,
            "min_delta": self.cfg.min_delta,
            "best_step": best["step"],
            "best": best,
            "stopped": self.stopped,
            "history": self.history,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)
