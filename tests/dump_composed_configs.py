"""Dump every composed config of ``conf/`` to YAML, to check that a refactor of the
YAML files changes nothing that a run sees.

    python tests/dump_composed_configs.py /tmp/conf_before
    # ... edit conf/ ...
    python tests/dump_composed_configs.py /tmp/conf_after
    diff -r /tmp/conf_before /tmp/conf_after

For the default config (``default``), every experiment in ``conf/experiment/`` and every
launcher in ``conf/hydra/launcher/`` it writes ``<name>.yaml``: the validated ``Config``
(``to_config``) as a run sees it. For the default config and the experiments it also writes
``<name>.hydra.yaml``: the composed DictConfig with the Hydra node (unresolved, so
``${now:...}`` stays put), which holds the sweep grids, less ``hydra.runtime.cwd`` and
``hydra.runtime.choices`` (the chosen option of each config group). The chosen options go
to ``<name>.choices.yaml``, so a new config group shows up there and nowhere else. Keys
are sorted throughout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from dsb.config import CONF_DIR, compose, to_config


def _yaml(node) -> str:
    return OmegaConf.to_yaml(node, resolve=False, sort_keys=True)


def composed_configs() -> dict[str, list[str]]:
    """Name -> command-line overrides, for every config this script dumps."""
    conf = Path(CONF_DIR)
    targets = {"default": []}
    for p in sorted((conf / "experiment").glob("*.yaml")):
        targets[f"experiment={p.stem}"] = [f"experiment={p.stem}"]
    for p in sorted((conf / "hydra" / "launcher").glob("*.yaml")):
        targets[f"hydra_launcher={p.stem}"] = [f"hydra/launcher={p.stem}"]
    return targets


def dump_all(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, overrides in composed_configs().items():
        dcfg = compose(overrides, return_hydra_config=True)
        files = {f"{name}.yaml": _yaml(OmegaConf.structured(to_config(compose(overrides))))}
        if name.startswith("hydra_launcher="):
            files[f"{name}.hydra.yaml"] = _yaml(dcfg.hydra.launcher)
        else:
            hydra = OmegaConf.to_container(dcfg.hydra, resolve=False)
            choices = hydra["runtime"].pop("choices")
            del hydra["runtime"]["cwd"]
            dcfg = OmegaConf.to_container(dcfg, resolve=False)
            dcfg["hydra"] = hydra
            files[f"{name}.hydra.yaml"] = _yaml(OmegaConf.create(dcfg))
            files[f"{name}.choices.yaml"] = _yaml(OmegaConf.create(choices))
        for fname, text in files.items():
            (out / fname).write_text(text)
            written.append(out / fname)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    for path in dump_all(sys.argv[1]):
        print(path)
