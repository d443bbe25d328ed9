"""The Weights & Biases sink of MetricsWriter: the same records as metrics.jsonl, one W&B run
per run directory across resumes, and a clear error when the package is missing.

The value checks use a fake ``wandb`` module that records calls; the smoke tests run the real
package in offline mode (no network) and read its offline run file back.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
import types
from pathlib import Path

import pytest
from dsb_testing import compose

from dsb.config import LoggingConfig, to_config
from dsb.metrics import MetricsWriter, WandbWriter, read_metrics

OPTIONS = LoggingConfig(
    tensorboard=False,
    wandb=True,
    wandb_project="proj",
    wandb_entity="team",
    wandb_mode="offline",
    wandb_tags=["a", "b"],
)
RUN_CONFIG = {"seed": 3, "optim": {"name": "adamw", "learning_rate": 0.01}}


class FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    def log(self, values, step=None):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[FakeRun] = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return runs


def _write_steps(writer: MetricsWriter, steps) -> None:
    """Training metrics, then evaluations, for each step (as the trainer writes them)."""
    for s in steps:
        writer.write(s, {"train/loss": 1.0 / (s + 1), "train/steps_per_s": 10.0 + s})
        writer.write(s, {"val/accuracy": 0.5 + s / 100})
        if s == 8:
            writer.write(s, {"val/loss": float("nan"), "val/ppl": float("inf")})
        writer.flush()


def _as_logged(records):
    return [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in records]


def test_wandb_gets_the_merged_metrics_jsonl_records(tmp_path, fake_wandb):
    run_dir = tmp_path / "2024-01-01_00-00-00"
    run_dir.mkdir()
    writer = MetricsWriter(run_dir, tensorboard=False, wandb=OPTIONS, config=RUN_CONFIG)
    _write_steps(writer, [0, 4, 8])
    writer.write(12, {"train/loss": 0.1})  # still pending: close flushes it
    writer.close()

    (run,) = fake_wandb
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [0, 4, 8, 12]
    assert records[2]["val/loss"] == "nan" and records[2]["val/ppl"] == "inf"
    assert run.logged == _as_logged(records)  # same steps, same merged values, same strings
    assert run.finished
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert run.init_kwargs == {
        "project": "proj",
        "entity": "team",
        "mode": "offline",
        "dir": str(run_dir),
        "config": RUN_CONFIG,
        "name": "2024-01-01_00-00-00",
        "group": None,
        "tags": ["a", "b"],
        "id": run_id,
        "resume": "allow",
    }


def test_only_an_enabled_writer_with_wandb_on_starts_a_run(tmp_path, fake_wandb):
    MetricsWriter(tmp_path / "p1", enabled=False, tensorboard=False, wandb=OPTIONS).close()
    MetricsWriter(tmp_path, tensorboard=False, wandb=None).close()
    for off in (LoggingConfig(wandb=False), LoggingConfig(wandb=True, wandb_mode="disabled")):
        MetricsWriter(tmp_path, tensorboard=False, wandb=off).close()
    assert fake_wandb == []
    assert not (tmp_path / "wandb_run.json").exists()


def test_resume_continues_the_same_run_and_skips_steps_it_holds(tmp_path, fake_wandb, caplog):
    writer = MetricsWriter(tmp_path, tensorboard=False, wandb=OPTIONS, config=RUN_CONFIG)
    _write_steps(writer, [0, 4, 8, 12])
    writer.flush()  # killed after step 12 was logged; the newest checkpoint is step 8
    del writer

    resumed = MetricsWriter(tmp_path, tensorboard=False, wandb=OPTIONS, config=RUN_CONFIG)
    resumed.truncate_after(8)
    with caplog.at_level(logging.WARNING, logger="dsb.metrics"):
        _write_steps(resumed, [8, 12, 16, 20])
        resumed.close()

    first, second = fake_wandb
    assert second.init_kwargs["id"] == first.init_kwargs["id"]
    assert second.init_kwargs["resume"] == "allow"
    assert [s for s, _ in first.logged] == [0, 4, 8, 12]
    # W&B already holds 8 and 12: they are not sent again (W&B would drop them), and the
    # run carries on from 16 with the values metrics.jsonl has.
    records = read_metrics(tmp_path)
    assert second.logged == _as_logged([r for r in records if r["step"] > 12])
    warnings = [r for r in caplog.records if "cannot rewrite" in r.getMessage()]
    assert len(warnings) == 1 and "up to 12" in warnings[0].getMessage()
    assert json.loads((tmp_path / "wandb_run.json").read_text())["last_step"] == 20


def test_resume_before_anything_was_logged_skips_nothing(tmp_path, fake_wandb):
    MetricsWriter(tmp_path, tensorboard=False, wandb=OPTIONS)  # died right after wandb.init
    writer = MetricsWriter(tmp_path, tensorboard=False, wandb=OPTIONS)
    _write_steps(writer, [0, 4])
    writer.close()
    first, second = fake_wandb
    assert second.init_kwargs["id"] == first.init_kwargs["id"]
    assert [s for s, _ in second.logged] == [0, 4]


def test_wandb_true_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ValueError, match=r"logging\.wandb=true.*pip install -e '\.\[wandb\]'"):
        to_config(compose(["logging.wandb=true"]))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'"):
        MetricsWriter(tmp_path, tensorboard=False, wandb=OPTIONS)
    # Off, or disabled, needs no package.
    to_config(compose(["logging.wandb=true", "logging.wandb_mode=disabled"]))
    MetricsWriter(tmp_path, tensorboard=False, wandb=LoggingConfig()).close()


def test_logging_config_composes_and_validates():
    cfg = to_config(
        compose(
            ["logging.wandb_project=p", "logging.wandb_tags=[x,y]", "logging.tensorboard=false"]
        )
    )
    assert cfg.logging == LoggingConfig(tensorboard=False, wandb_project="p", wandb_tags=["x", "y"])
    assert to_config(compose()).logging == LoggingConfig()
    match = r"logging\.wandb_mode='cloud'.*null or one of online, offline, disabled"
    with pytest.raises(ValueError, match=match):
        to_config(compose(["logging.wandb_mode=cloud"]))


# --- the real package, offline -------------------------------------------------------------


def _offline_records(run_file: Path):
    """The records of an offline ``run-<id>.wandb`` file (W&B's LevelDB-style log: a 7-byte
    header, then 32 KiB blocks of chunks with a 7-byte header: CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf = run_file.read_bytes()
    assert buf[:4] == b":W&B", "not a W&B run file"
    pos, block, data = 7, 32768, b""
    while pos + 7 <= len(buf):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        if pos + 7 + length > len(buf):  # still being written
            return
        data += buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last chunk
            rec = pb.Record()
            rec.ParseFromString(data)
            data = b""
            yield rec


def _offline_run(run_dir: Path, run_id: str, attempt: int):
    """The offline run directories of ``run_id``, and the run record and history of the
    ``attempt``-th one, once its file is complete (wandb's service process writes it
    asynchronously and may still be flushing it after ``finish`` returns)."""
    # offline-run-<time>-<id>, with a suffix -1, -2, ... when an attempt starts in the same second
    dirs = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}*"))
    (run_file,) = dirs[attempt].glob(f"run-{run_id}.wandb")
    deadline = time.monotonic() + 60
    while True:
        records = list(_offline_records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{run_file} has no exit record"
        time.sleep(0.05)
    run, history = None, []
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
        elif kind == "history":
            values = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            history.append(
                (rec.history.step.num, {k: v for k, v in values.items() if not k.startswith("_")})
            )
    return dirs, run, history


@pytest.fixture
def real_wandb(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return wandb


def test_real_wandb_offline_run_and_resume(tmp_path, real_wandb):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writer = MetricsWriter(run_dir, tensorboard=False, wandb=OPTIONS, config=RUN_CONFIG)
    _write_steps(writer, [0, 4, 8])
    writer.close()
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    dirs, run, history = _offline_run(run_dir, run_id, 0)
    assert len(dirs) == 1
    assert run.run_id == run_id and run.display_name == "run" and list(run.tags) == ["a", "b"]
    assert run.project == "proj" and run.entity == "team"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["optim"] == RUN_CONFIG["optim"] and config["seed"] == 3
    assert history == _as_logged(read_metrics(run_dir))

    resumed = MetricsWriter(run_dir, tensorboard=False, wandb=OPTIONS, config=RUN_CONFIG)
    resumed.truncate_after(4)
    _write_steps(resumed, [4, 8, 12])
    resumed.close()
    dirs, run, history = _offline_run(run_dir, run_id, 1)
    assert len(dirs) == 2 and run.run_id == run_id  # `wandb sync` appends to the same run
    assert history == _as_logged(read_metrics(run_dir)[-1:])  # only step 12 is new to W&B


def test_wandb_writer_is_the_sink(tmp_path, fake_wandb):
    """WandbWriter on its own, as MetricsWriter uses it."""
    w = WandbWriter(tmp_path, OPTIONS, config=None)
    w.log(3, {"x": 1.0})
    w.close()
    (run,) = fake_wandb
    assert run.logged == [(3, {"x": 1.0})] and run.finished
    assert run.init_kwargs["config"] is None and run.init_kwargs["name"] == tmp_path.name


def test_defaults_leave_mode_and_entity_to_wandb(tmp_path, fake_wandb):
    """Null mode and entity are passed as None: WANDB_MODE / WANDB_ENTITY then apply."""
    WandbWriter(tmp_path, LoggingConfig(wandb=True)).close()
    (run,) = fake_wandb
    kw = run.init_kwargs
    assert kw["mode"] is None and kw["entity"] is None and kw["project"] == "dsb"
    assert kw["tags"] == [] and kw["group"] is None


def test_a_training_run_with_logging_wandb_sends_metrics_jsonl(tmp_path, fake_wandb, tfds_dir):
    """train() wires the sinks: logging.wandb=true sends exactly the run's metrics.jsonl
    lines, with the run's resolved config, and closes the W&B run; logging.tensorboard is
    honoured."""
    from dsb_testing import HELD_OUT_ONLY, tiny_config

    from dsb.train import train

    cfg = tiny_config(
        "train.total_steps=4",
        "optim.warmup_steps=1",
        "logging.wandb=true",
        "logging.wandb_mode=offline",
        "logging.tensorboard=false",
        *HELD_OUT_ONLY,  # the sinks, not the evaluators: held-out metrics suffice
    )
    train(cfg, tmp_path / "run")
    (run,) = fake_wandb
    assert run.finished and run.init_kwargs["config"]["train"]["total_steps"] == 4
    assert run.logged == _as_logged(read_metrics(tmp_path / "run"))
    assert not (tmp_path / "run" / "tensorboard").exists()  # logging.tensorboard=false
