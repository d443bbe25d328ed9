"""``python -m dsb.mdl [experiment=mdl_erasure_local] [key=value ...]``: prequential MDL
of the configured training split in the Hydra run directory (``-m`` sweeps; rerunning
with the same ``hydra.run.dir`` skips finished prefixes and resumes the others)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dsb.config import CONF_DIR, to_config
from dsb.main import run_app


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> float:
    from dsb.mdl.core import run_mdl

    cfg = to_config(dcfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    result = run_mdl(cfg, out)
    print(
        f"MDL {result.mdl_bits_per_sample:.4f} bits/sample "
        f"(erasure={cfg.data.erasure}, seed={cfg.seed}) -> {out / 'mdl.json'}",
        flush=True,
    )
    return result.mdl_bits_per_sample


def main() -> None:
    run_app(_hydra_main)


if __name__ == "__main__":
    sys.exit(main())
