"""Metric writers (process 0 only): ``metrics.jsonl``, TensorBoard event files and,
optionally, Weights & Biases.

``metrics.jsonl`` is the source of truth; TensorBoard and W&B are views of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dsb.config import LoggingConfig, import_wandb

__all__ = ["MetricsWriter", "NonFiniteLossError", "WandbWriter", "import_wandb", "read_metrics"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or Inf."""

    def __init__(self, step: int, value: float):
        super().__init__(
            f"training loss is {value} at step {step} (the loss of the batch that update "
            f"{step} was computed on); stopping. Lower the learning rate, enable "
            "optim.grad_clip_norm, or check the data for NaNs."
        )
        self.step = step
        self.run_dir: Path | None = None
        self.last_good_checkpoint: int | None = None

    def add_context(self, run_dir: str | Path, checkpoint_steps: list[int]) -> None:
        """Name the way back: the newest checkpoint whose parameters still gave a finite
        loss (update ``s`` computes its loss on the parameters of step ``s - 1``, so a
        checkpoint at ``step - 1`` or later is the diverged state) and the command that
        resumes from it with a lower learning rate."""
        self.run_dir = Path(run_dir)
        good = [c for c in checkpoint_steps if c <= self.step - 2]
        self.last_good_checkpoint = max(good) if good else None

    def how_to_continue(self, lr: float, overrides: list[str] = ()) -> str:
        """What to run next, as commands (``overrides``: the failed run's own)."""
        keep = [
            o
            for o in overrides
            if not o.startswith(
                ("optim.learning_rate=", "ckpt.resume_step=", "ckpt.allow_config_change=")
            )
        ]
        base = " ".join(["python -m dsb.main", *keep])
        lower = f"optim.learning_rate={lr / 10:g}"
        fresh = f"start fresh in a new directory: {base} {lower}"
        if self.run_dir is None or self.last_good_checkpoint is None:
            return fresh
        return (
            f"resume from checkpoint {self.last_good_checkpoint} (the last one before the loss "
            f"diverged) with a lower learning rate: {base} hydra.run.dir={self.run_dir} "
            f"ckpt.resume_step={self.last_good_checkpoint} ckpt.allow_config_change=true "
            f"{lower}; or {fresh}"
        )


class MetricsWriter:
    """Writes one JSON object per logged step to ``metrics.jsonl``, plus TensorBoard and,
    when ``wandb`` asks for it, Weights & Biases.

    Values written for the same step (training metrics, then evaluations) are merged into
    one line, flushed when a later step is written or on ``flush``/``close``. TensorBoard
    receives each value as it is written; W&B receives each merged line as it is flushed
    (``WandbWriter``). Nothing is written when ``enabled`` is false (every process but 0).

    ``wandb``: the run's ``LoggingConfig`` (``cfg.logging``) or None; W&B is used when its
    ``wandb`` is true and its ``wandb_mode`` is not ``disabled``. ``config``: the run's
    resolved config as a dict (or a dataclass), recorded as the W&B run's config.
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: LoggingConfig | None = None,
        config: Mapping[str, Any] | Any | None = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._pending: dict[str, Any] | None = None
        self._tb = None
        self._wandb: WandbWriter | None = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if enabled and wandb is not None and wandb.wandb and wandb.wandb_mode != "disabled":
            self._wandb = WandbWriter(run_dir, wandb, config)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them). W&B cannot drop
        steps it already holds; ``WandbWriter`` documents what it does instead."""
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
            if self._wandb is not None:
                values = {k: v for k, v in self._pending.items() if k != "step"}
                self._wandb.log(self._pending["step"], values)
            self._pending = None
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


class WandbWriter:
    """Sends the records of ``metrics.jsonl`` to a Weights & Biases run.

    Each record goes to ``run.log(values, step=step)`` with exactly the values of its
    ``metrics.jsonl`` line, non-finite values included as the same strings ("nan",
    "inf"). The W&B run lives in ``<run_dir>/wandb/``, is named after the run directory
    (or ``logging.wandb_name``), and its id is kept in ``<run_dir>/wandb_run.json`` so that
    a resumed run continues the same W&B run (``resume="allow"``).

    Resuming: W&B's steps must increase, and it cannot rewrite a step it already holds
    (it drops such a log with a warning per step; rewinding a run, ``resume_from``, is a
    server-side preview feature). ``wandb_run.json`` records the
    last step sent to W&B, so a resumed run that re-logs steps up to that one skips them
    explicitly, with one warning: W&B keeps the values the first attempt logged (the
    same, but for timings, since a resumed run reproduces an uninterrupted one), the
    resumed run's values for those steps are in ``metrics.jsonl``, and W&B continues
    with the first step after.
    """

    STATE_FILE = "wandb_run.json"

    def __init__(
        self,
        run_dir: str | Path,
        options: LoggingConfig,
        config: Mapping[str, Any] | Any | None = None,
    ):
        wandb = import_wandb()
        run_dir = Path(run_dir)
        self.state_path = run_dir / self.STATE_FILE
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.run_id: str = state.get("id") or uuid.uuid4().hex[:16]
        # Steps up to this one were sent by an earlier attempt and are skipped.
        self.resumed_through: int | None = state.get("last_step")
        self.last_step: int | None = self.resumed_through
        self._warned = False
        self._save_state()  # the id is kept even if this attempt dies before logging
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        self.run = wandb.init(
            project=options.wandb_project,
            entity=options.wandb_entity,
            mode=options.wandb_mode,
            dir=str(run_dir),
            config=dict(config) if config is not None else None,
            name=options.wandb_name or run_dir.resolve().name,
            group=options.wandb_group,
            tags=list(options.wandb_tags),
            id=self.run_id,
            resume="allow",
        )

    def log(self, step: int, values: dict[str, Any]) -> None:
        step = int(step)
        if self.resumed_through is not None and step <= self.resumed_through:
            if not self._warned:
                log.warning(
                    "W&B run %s already holds steps up to %d from before this run resumed; "
                    "W&B cannot rewrite logged steps, so steps %d..%d are not sent again "
                    "(metrics.jsonl has their resumed values) and W&B continues from step %d",
                    self.run_id,
                    self.resumed_through,
                    step,
                    self.resumed_through,
                    self.resumed_through + 1,
                )
                self._warned = True
            return
        self.run.log(values, step=step)
        if self.last_step is None or step > self.last_step:
            self.last_step = step
            self._save_state()

    def close(self) -> None:
        self.run.finish()

    def _save_state(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"id": self.run_id, "last_step": self.last_step}) + "\n")
        os.replace(tmp, self.state_path)


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
