"""Metric writers (process 0 only): ``metrics.jsonl`` and TensorBoard event files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsWriter", "NonFiniteLossError", "read_metrics"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or Inf."""

    def __init__(self, step: int, value: float):
        super().__init__(
            f"training loss is {value} at step {step} (the loss of the batch that update "
            f"{step} was computed on); stopping. Lower the learning rate, enable "
            "optim.grad_clip_norm, or check the data for NaNs."
        )
        self.step = step


class MetricsWriter:
    """Writes one JSON object per logged step to ``metrics.jsonl``, plus TensorBoard.

    Values written for the same step (training metrics, then evaluations) are merged into
    one line, flushed when a later step is written or on ``flush``/``close``.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._pending: dict[str, Any] | None = None
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        # The resumed step's line stays open, so values re-logged for it merge into it.
        if kept and kept[-1]["step"] == step:
            self._pending = kept.pop()
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._pending is not None and self._pending["step"] != step:
            self.flush()
        if self._pending is None:
            self._pending = {"step": int(step)}
        for k, v in values.items():
            v = float(v)
            self._pending[k] = v if math.isfinite(v) else str(v)
            if self._tb is not None:
                self._tb.add_scalar(k, v, step)

    def flush(self) -> None:
        if self.enabled and self._pending is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(self._pending) + "\n")
            self._pending = None
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a run directory or the file itself), merged by step
    and sorted; a torn last line (a killed run) is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    by_step: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_step.setdefault(rec["step"], {}).update(rec)
    return [by_step[s] for s in sorted(by_step)]
