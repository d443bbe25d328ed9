"""What a run is, built from its config and its directory (``RunContext``).

The trainer, the MDL driver and the notebook helpers (``dsb.analysis``) all derive a run's
data, batch samplers, schedule, metrics writer and evaluator suite from the same
``RunContext``, so a notebook re-deriving a run sees exactly what the trainer saw.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsb.config import Config, read_run_config
from dsb.data.loader import BatchSampler
from dsb.data.pipeline import DataInfo, data_info, load_indices, split_loader, training_split
from dsb.evals.base import EvalContext
from dsb.evals.suite import EvalSuite
from dsb.metrics import MetricsWriter
from dsb.schedule import Schedule

__all__ = ["RunContext"]


@dataclasses.dataclass
class RunContext:
    """A run's config and directory, and what follows from them.

    ``write_reports``: whether building the data writes its reports into ``run_dir`` (the
    erasure or synthetic-set report); the trainer's process 0 does, notebooks re-deriving
    a run do not.
    """

    config: Config
    run_dir: Path
    is_main_process: bool = True
    write_reports: bool = True

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> RunContext:
        """The context of a finished or running run, from its ``config.yaml``."""
        run_dir = Path(run_dir)
        return cls(read_run_config(run_dir), run_dir, write_reports=False)

    @functools.cached_property
    def info(self) -> DataInfo:
        return data_info(self.config)

    @functools.cached_property
    def schedule(self) -> Schedule:
        return Schedule.from_config(self.config)

    @functools.cached_property
    def load_split(self):
        return split_loader(self.config)

    @functools.cached_property
    def _train_data_and_report(self) -> tuple[dict[str, np.ndarray], dict | None, Any]:
        d = self.config.data
        report = self.write_reports and self.is_main_process
        name = "erasure.json" if d.erasure else None
        if d.synthetic.kind is not None:
            from dsb.data.synthetic import REPORT_FILE

            name = REPORT_FILE
        return training_split(
            self.config,
            self.load_split,
            self.run_dir / name if report and name else None,
            return_eraser=True,
        )

    @functools.cached_property
    def load_eval_split(self):
        """``split -> host arrays`` for evaluators: ``load_split``, except that with
        ``data.erase_eval_splits`` every split other than ``data.train_split`` goes
        through the training split's erasure maps (``dsb.data.transforms.apply_eraser``;
        cached). The training split itself stays real here, as without the option (the
        DSB probes fit their statistics on it)."""
        d = self.config.data
        if not (d.erasure and d.erase_eval_splits):
            return self.load_split

        @functools.cache
        def load(split: str) -> dict[str, np.ndarray]:
            if split == d.train_split:
                return self.load_split(split)
            from dsb.data.transforms import apply_eraser

            return apply_eraser(self._train_data_and_report[2], self.load_split(split))

        return load

    @property
    def full_train_data(self) -> dict[str, np.ndarray]:
        """The whole training split, concept-erased when ``data.erasure`` is set (the
        erasure is always fitted on the whole split); ``data.train_indices`` and the
        early-stopping sets index into it."""
        return self._train_data_and_report[0]

    @functools.cached_property
    def train_data(self) -> dict[str, np.ndarray]:
        """The examples the trainer samples: ``full_train_data``, or its
        ``data.train_indices`` subset."""
        full = self.full_train_data
        if self.config.data.train_indices is None:
            return full
        idx = load_indices(self.config.data.train_indices, len(full["label"]), "data.train_indices")
        return {k: v[idx] for k, v in full.items()}

    def erasure_metrics(self) -> dict[str, float]:
        """The erasure's achieved residuals and ``target_met`` (1.0 when every check of
        ``erasure.json`` met its tolerance) as ``erasure/...`` metrics; empty without
        erasure. The trainer logs them with step 0."""
        report = self._train_data_and_report[1]
        if report is None or not self.config.data.erasure:
            return {}
        out = {f"erasure/{k}": float(v) for k, v in report["residuals"].items()}
        if "barycenter" in report:
            out["erasure/barycenter_residual"] = float(report["barycenter"]["residual"])
            out["erasure/barycenter_iterations"] = float(report["barycenter"]["iterations"])
        return out | {"erasure/target_met": float(report["met"])}

    def synthetic_metrics(self) -> dict[str, float]:
        """The synthetic training set's achieved moment errors against the training split's
        class statistics and ``target_met`` (1.0 when every check of its report was met;
        a truncated-normal set misses by construction) as ``synthetic/...`` metrics; empty
        without ``data.synthetic``. The trainer logs them with step 0."""
        report = self._train_data_and_report[1]
        if report is None or self.config.data.synthetic.kind is None:
            return {}
        rep = report["report"]
        out = {f"synthetic/{k}": float(rep[k]) for k in ("mean_rel_err", "cov_rel_err")}
        return out | {"synthetic/target_met": float(rep.get("met", True))}

    def metrics_writer(self) -> MetricsWriter:
        """``metrics.jsonl`` plus the sinks ``logging`` asks for, written by process 0."""
        return MetricsWriter(
            self.run_dir,
            enabled=self.is_main_process,
            tensorboard=self.config.logging.tensorboard,
            wandb=self.config.logging,
            config=self.config,
        )

    def sampler(self, process_index: int = 0, process_count: int = 1) -> BatchSampler:
        """Batch ``s`` of the run (this process's part of it), as the trainer draws it."""
        d = self.config.data
        return BatchSampler(
            self.train_data,
            d.batch_size,
            seed=d.shuffle_seed,
            process_index=process_index,
            process_count=process_count,
            reshuffle_each_epoch=d.reshuffle_each_epoch,
        )

    @functools.cached_property
    def global_sampler(self) -> BatchSampler:
        return self.sampler()

    def eval_context(self, out_dir: str | Path | None = None) -> EvalContext:
        """What evaluators are built with; they write into ``out_dir`` (default: the run
        directory, whose cached probe sets they then reuse)."""
        info = self.info
        return EvalContext(
            load_split=self.load_eval_split,
            train_split=self.config.data.train_split,
            num_classes=info.num_classes,
            input_shape=info.input_shape,
            run_dir=Path(self.run_dir if out_dir is None else out_dir),
            seed=self.config.seed,
            is_main_process=self.is_main_process,
            config=self.config,
            # The global batch update ``step + 1`` was computed on; built on first use,
            # since most evaluators never replay training.
            train_batch=lambda step: self.global_sampler(step),
            vocab_size=info.vocab_size,
        )

    def eval_suite(
        self, evals: Mapping[str, Any] | None = None, out_dir: str | Path | None = None
    ) -> EvalSuite:
        """The evaluator suite of ``evals`` (default: the run's own ``evals`` entries) over
        the run's schedule, built with ``eval_context(out_dir)``."""
        evals = self.config.evals if evals is None else evals
        return EvalSuite(self.eval_context(out_dir), evals, self.schedule)
