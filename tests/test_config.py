"""Config composition, validation errors, and every experiment file."""

from pathlib import Path

import pytest
from dsb_testing import CONF_DIR, compose, tiny_config

from dsb.config import Config, to_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def test_default_config_is_the_digits_experiment():
    cfg = to_config(compose())
    assert isinstance(cfg, Config)
    assert cfg.data.name == "digits" and cfg.model.name == "mlp"
    assert cfg.evals["val"] == {"type": "classification", "split": "test"}
    assert cfg.ckpt.log_spaced


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = to_config(compose([f"experiment={name}"]))
    assert cfg.name  # each experiment names its runs
    assert cfg.train.total_steps > 0


def test_experiments_exist():
    assert len(EXPERIMENTS) >= 3


def _error_text(excinfo) -> str:
    e, parts = excinfo.value, []
    while e is not None:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def test_unknown_key_names_the_key():
    with pytest.raises(Exception) as ei:
        compose(["optim.lr=0.1"])
    assert "optim.lr" in _error_text(ei) or "'lr'" in _error_text(ei)


def test_wrong_type_names_the_key():
    with pytest.raises(Exception) as ei:
        compose(["optim.learning_rate=fast"])
    assert "optim.learning_rate" in _error_text(ei)
    with pytest.raises(Exception) as ei:
        compose(["train.total_steps=1.5"])
    assert "train.total_steps" in _error_text(ei)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("+model.kwargs.depth=3", "model.kwargs.depth"),
        ("model.name=nosuchnet", "nosuchnet"),
        ("data.name=imagenet_a", "data.name"),
        ("optim.name=lion", "optim.name"),
        ("optim.schedule=step", "optim.schedule"),
        ("train.total_steps=0", "train.total_steps"),
        ("+evals.val.bogus=1", "evals.val.bogus"),
        ("evals.val.type=nosuch", "nosuch"),
        ("optim.warmup_steps=100000", "optim.warmup_steps"),
        ("+evals.val.when=sometimes", "evals.val.when"),
    ],
)
def test_semantic_errors_name_the_key(override, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        to_config(compose([override]))


def test_tiny_config_helper():
    cfg = tiny_config()
    assert cfg.train.total_steps == 16 and cfg.model.kwargs["widths"] == [32]


def test_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    for launcher in ("slurm", "slurm_multigpu"):
        cfg = compose([f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert "submitit" in cfg.hydra.launcher._target_.lower()
        assert cfg.hydra.launcher.gpus_per_node >= 1
