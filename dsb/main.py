"""Command-line entry: ``python -m dsb.main [experiment=NAME] [key=value ...]`` (or ``dsb-train``).

A thin Hydra app: compose ``conf/``, validate it against ``dsb.config``, train, and print
where everything was written. ``-m`` runs sweeps. Rerunning with the same
``hydra.run.dir=<run dir>`` resumes from that directory's newest checkpoint.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dsb.config import CONF_DIR, register_schemas, to_config

log = logging.getLogger("dsb")


def _report(result) -> str:
    d = result.run_dir
    steps = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    lines = [
        f"run directory : {d}",
        f"metrics       : {d / 'metrics.jsonl'}",
        f"tensorboard   : {d / 'tensorboard'}",
        f"checkpoints   : {d / 'checkpoints'} (steps {', '.join(map(str, steps))})",
        f"config        : {d / 'config.yaml'}",
    ]
    lines += [f"figure        : {f}" for f in result.figures]
    # One line per evaluator group (``val``, ``dsb/maxent/ics``, ...): its final accuracy
    # and loss; every value is in metrics.jsonl and summary.json.
    groups: dict[str, list[str]] = {}
    for k, v in sorted(result.last_metrics.items()):
        group, _, name = k.rpartition("/")
        if group and not group.startswith("time") and name.endswith(("accuracy", "loss")):
            groups.setdefault(group, []).append(f"{name}={v:.4f}")
    if groups:
        lines.append(f"final metrics (step {result.final_step}):")
        width = max(24, *(len(g) + 2 for g in groups))  # long group names stay apart
        lines += [f"  {g:<{width}}{', '.join(vals)}" for g, vals in groups.items()]
    if result.resumed_from is not None:
        lines.append(f"(resumed from checkpoint {result.resumed_from})")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> float | None:
    import jax

    from dsb.train import train

    cfg = to_config(dcfg)  # validates everything before any compute
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = train(cfg, run_dir)
    if jax.process_index() == 0:
        print(_report(result), flush=True)
    # Returned for sweepers that optimise an objective.
    return result.last_metrics.get("val/loss")


def run_app(hydra_main) -> None:
    """Run a ``@hydra.main`` app of dsb's configs: the config schemas registered, INFO
    logging with the libraries' chatter at WARNING (``dsb.main`` and ``dsb.mdl`` share it)."""
    register_schemas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hydra_main()


def main() -> None:
    run_app(_hydra_main)


if __name__ == "__main__":
    sys.exit(main())
