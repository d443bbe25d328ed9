"""What checkpoint checksums cost: save and restore time with and without them.

    python benchmarks/checkpoint_integrity.py [--repeats 5] [--out FILE.json]

``dsb.checkpoint`` records a crc32 of every array (from the host copy of the state) and,
once orbax has finalised a checkpoint, of every file in it, and verifies both at restore
(``ckpt.verify_checksums``; orbax verifies nothing it reads back). This measures one
synchronous save (until the checkpoint and its manifest are on disk) and one restore of
the whole training state (params, optimizer state, step, key) with checksums off and on,
interleaved (off, on, off, on, ...) in the same process, best of ``--repeats``, for:

- ``default``: the default job's state (``python -m dsb.main``: the MLP on digits, AdamW);
- ``resnet18``: a ResNet-18-sized state (``experiment=digits_resnet18`` at the standard
  width 64: ~11.2M parameters, AdamW's two moments, ~134 MB of float32).

Each save goes to a fresh directory on the same disk as ``--dir`` (default: the system's
temporary directory); restores read a checkpoint just written, so mostly from the page
cache, which is where the checksum's share of the time is largest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dsb_testing import compose  # noqa: E402

from dsb.checkpoint import Checkpointer  # noqa: E402
from dsb.config import to_config  # noqa: E402
from dsb.optim import make_optimizer  # noqa: E402
from dsb.step import TrainState, init_model  # noqa: E402

STATES = {
    "default": [],
    "resnet18": ["experiment=digits_resnet18", "model.kwargs.width=64"],
}


def _state(overrides: list[str]):
    cfg = to_config(compose(overrides))
    model = init_model(cfg, norm_axis_name=None)
    tx = make_optimizer(cfg.optim, cfg.train.total_steps)
    state = TrainState.create(model, tx, cfg.seed)
    abstract = TrainState.abstract(model, tx, sharding=SingleDeviceSharding(jax.devices()[0]))
    tree = state.to_dict()
    nbytes = sum(x.nbytes for x in jax.tree.leaves(tree))
    nparams = sum(x.size for x in jax.tree.leaves(state.params))
    return tree, abstract.to_dict(), nbytes, nparams


def _once(tree, abstract, directory: Path, checksums: bool) -> tuple[float, float]:
    shutil.rmtree(directory, ignore_errors=True)
    ck = Checkpointer(directory, async_save=False, checksums=checksums)
    t0 = time.perf_counter()
    ck.save(1, tree, {"step": 1, "data": {"next_step": 1}})
    ck.wait()
    t_save = time.perf_counter() - t0
    ck.close()
    ck = Checkpointer(directory, async_save=False, checksums=checksums, read_only=True)
    t0 = time.perf_counter()
    restored, _ = ck.restore(1, abstract)
    jax.block_until_ready(restored)
    t_restore = time.perf_counter() - t0
    ck.close()
    return t_save, t_restore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/checkpoint_integrity.json"))
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, overrides in STATES.items():
            tree, abstract, nbytes, nparams = _state(overrides)
            _once(tree, abstract, Path(tmp) / "warmup", True)  # compile, warm the caches
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for checksums in (False, True):
                    times[checksums].append(_once(tree, abstract, Path(tmp) / name, checksums))
            best = {k: np.min(np.asarray(v), axis=0) for k, v in times.items()}
            results[name] = {
                "overrides": overrides,
                "parameters": int(nparams),
                "state_bytes": int(nbytes),
                "save_s": {"without": float(best[False][0]), "with": float(best[True][0])},
                "restore_s": {"without": float(best[False][1]), "with": float(best[True][1])},
                "save_ratio": float(best[True][0] / best[False][0]),
                "restore_ratio": float(best[True][1] / best[False][1]),
            }
            print(name, json.dumps(results[name]), flush=True)
    out = {
        "what": "checkpoint save (sync, until on disk) and restore, checksums off vs on; "
        f"best of {args.repeats}, interleaved",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "jax_backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
        },
        "command": "python benchmarks/checkpoint_integrity.py",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
