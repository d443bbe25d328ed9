"""Config composition, validation errors, every experiment file, and the shared pieces
(conf/recipe/, conf/evals/) that experiments include through their defaults lists."""

import re
from pathlib import Path

import pytest
import yaml
from dsb_testing import CONF_DIR, compose, tiny_config
from omegaconf import OmegaConf

from dsb.config import Config, to_config

# Every experiment, by name: adding or removing a file in conf/experiment/ means updating
# this list (and the README experiment table or docs/sweeps_slurm.md).
EXPECTED_EXPERIMENTS = {
    "cifar10_resnet18",
    "digits_lenet5",
    "digits_resnet18",
    "dsb_cifar10",
    "dsb_digits",
    "dsb_fashion_mnist",
    "dsb_mnist",
    "edge_of_stability",
    "jacobian_digits",
    "lm_ngram_cluster",
    "lm_ngram_default",
    "mdl_erasure_cifar10",
    "mdl_erasure_fashion_mnist",
    "mdl_erasure_fashion_mnist_lenet5",
    "mdl_erasure_fashion_mnist_resnet",
    "mdl_erasure_local",
    "mdl_erasure_local_lenet5",
    "mnist_lenet5",
    "poly_mnist",
    "sweep_dsb_probes",
    "sweep_dsb_probes_local",
    "sweep_dsb_mnist_local",
    "sweep_dsb_fashion_mnist_local",
    "sweep_lm_ngram",
    "sweep_lm_ngram_local",
}
EXPERIMENT_FILES = {p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")}
# Both sets, so that a file missing from the list is still composed and vice versa.
EXPERIMENTS = sorted(EXPECTED_EXPERIMENTS | EXPERIMENT_FILES)
LM_EXPERIMENTS = {e for e in EXPECTED_EXPERIMENTS if "lm_ngram" in e}
VAL = {"type": "classification", "split": "test"}  # conf/evals/classification.yaml


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


def test_experiment_files_are_exactly_the_expected_ones():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    assert EXPERIMENT_FILES == EXPECTED_EXPERIMENTS, (
        f"not in conf/experiment/: {sorted(EXPECTED_EXPERIMENTS - EXPERIMENT_FILES)}; "
        f"not in EXPECTED_EXPERIMENTS: {sorted(EXPERIMENT_FILES - EXPECTED_EXPERIMENTS)}"
    )
    # ... and they are what Hydra offers as `experiment=<name>`.
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("experiment")
    assert set(options) == EXPECTED_EXPERIMENTS


def _composed(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose(overrides), resolve=True)


def _pick(cfg: dict, keys: list[str]) -> dict:
    out = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


# conf/recipe/dsb_cifar10.yaml: the DSB paper's CIFAR-10 recipe.
DSB_RECIPE_KEYS = ["data.batch_size", "data.augment", "optim", "train", "evals"]
# conf/recipe/lm_ngram_cluster.yaml: the GPU language-model recipe (depth and width are
# each experiment's own).
LM_RECIPE_KEYS = [
    "data.batch_size",
    "data.text",
    "model.kwargs.num_heads",
    "model.kwargs.positional",
    "optim",
    "train",
    "evals",
]


@pytest.mark.parametrize(
    ("experiments", "keys"),
    [
        (("dsb_cifar10", "sweep_dsb_probes"), DSB_RECIPE_KEYS),
        (("lm_ngram_cluster", "sweep_lm_ngram"), LM_RECIPE_KEYS),
    ],
    ids=["dsb_cifar10", "lm_ngram_cluster"],
)
def test_experiments_sharing_a_recipe_agree_on_it(experiments, keys):
    first, *rest = [_pick(_composed([f"experiment={e}"]), keys) for e in experiments]
    for other in rest:
        assert other == first


def test_dsb_cifar10_recipe_is_the_papers():
    cfg = to_config(compose(["experiment=sweep_dsb_probes"]))
    assert (cfg.data.batch_size, cfg.train.total_steps) == (128, 65536)
    aug = cfg.data.augment
    assert (aug.crop_padding, aug.horizontal_flip) == (4, True)
    assert (aug.randaugment_num_ops, aug.randaugment_magnitude) == (2, 9)
    o = cfg.optim
    assert (o.name, o.learning_rate, o.b1, o.b2, o.weight_decay) == ("adamw", 1e-3, 0.9, 0.95, 0.05)
    assert (o.schedule, o.warmup_steps) == ("warmup_cosine", 2000)
    assert cfg.evals["dsb"]["maxent_sets"] == ["ics", "box1", "gaussian", "box2", "box3"]
    assert cfg.evals["dsb"]["num_samples"] == 10000


@pytest.mark.parametrize("name", ["dsb_mnist", "dsb_fashion_mnist"])
def test_dsb_mnist_recipes_have_the_papers_shape(name):
    """AdamW + warmup-cosine, log-spaced checkpoints, every max-ent set and OT edit, on a
    model that runs on 2 CPU cores."""
    cfg = to_config(compose([f"experiment={name}"]))
    assert (cfg.data.name, cfg.model.name) == (name.removeprefix("dsb_"), "lenet5")
    o = cfg.optim
    assert (o.name, o.learning_rate, o.b1, o.b2, o.weight_decay) == ("adamw", 1e-3, 0.9, 0.95, 0.05)
    assert o.schedule == "warmup_cosine" and 0 < o.warmup_steps < cfg.train.total_steps
    assert cfg.ckpt.log_spaced and cfg.data.batch_size == 128
    dsb = cfg.evals["dsb"]
    assert dsb["maxent_sets"] == ["ics", "box1", "gaussian", "box2", "box3"]
    assert dsb["ot_sets"] == ["cqn", "mean_shift", "gaussian"]


# The evaluators each experiment brings itself, whatever the `evals` group says (its own
# keys and the shared conf/evals/ files in its defaults list): what `~evals` leaves.
# conf/evals/probes.yaml brings `poly` (poly_approx, skipped with a warning for non-MLPs).
OWN_EVALS = {
    "dsb_cifar10": {"val", "dsb", "poly"},
    "dsb_digits": {"val", "dsb", "poly"},
    "dsb_fashion_mnist": {"val", "dsb", "poly"},
    "dsb_mnist": {"val", "dsb", "poly"},
    "edge_of_stability": {"sharp"},  # evals=classification (val) by group override
    "jacobian_digits": {"jac"},  # evals=classification (val) by group override
    "poly_mnist": {"poly"},  # evals=classification (val) by group override
    "sweep_dsb_probes": {"val", "dsb", "poly"},
    "sweep_dsb_probes_local": {"val", "dsb", "poly"},
    "sweep_dsb_mnist_local": {"val", "dsb", "poly"},  # make_reference drops poly
    "sweep_dsb_fashion_mnist_local": {"val", "dsb", "poly"},
    "sweep_lm_ngram_local": {"ngram"},  # num_sequences only, on top of evals/ngram.yaml
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_val_evaluator_entry(name):
    evals = _composed([f"experiment={name}"])["evals"]
    if name in LM_EXPERIMENTS:
        assert "val" not in evals
    else:
        assert evals["val"] == VAL
    own = _composed([f"experiment={name}", "~evals"])["evals"]
    assert set(own) == OWN_EVALS.get(name, set())
    if "val" in own:
        assert own["val"] == VAL


def _yaml_mappings(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _yaml_mappings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _yaml_mappings(v)


def test_val_entry_is_written_once():
    """`{type: classification, split: test}` lives in conf/evals/classification.yaml only;
    other configs include that file."""
    conf = Path(CONF_DIR)
    found = sorted(
        str(p.relative_to(conf))
        for p in conf.rglob("*.yaml")
        if any(m == VAL for m in _yaml_mappings(yaml.safe_load(p.read_text())))
    )
    assert found == ["evals/classification.yaml"]


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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # A misspelt set name (it used to pass validation and fail when the evaluator was
        # built, at the first checkpoint).
        (
            "evals.dsb.maxent_sets=[ics,gausian]",
            "evals.dsb.maxent_sets[1]='gausian': unknown max-ent set 'gausian'; registered: ",
        ),
        ("evals.dsb.ot_sets=[cqn,meanshift]", "evals.dsb.ot_sets[1]='meanshift': unknown OT"),
        ("evals.dsb.maxent_sets=ics", "evals.dsb.maxent_sets='ics': must be a list"),
        # A bad value of a set option (box2's particle steps: optax failed at step 0).
        (
            "+evals.dsb.particle_steps=0",
            "evals.dsb.particle_steps=0 (used by max-ent set 'box2'): must be a positive",
        ),
    ],
)
def test_probe_sets_and_their_options_are_checked_at_validation(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        to_config(compose([override]))
    # Unused by every configured set, the option is not checked (as before).
    to_config(compose(["evals.dsb.maxent_sets=[ics]", "+evals.dsb.particle_steps=0"]))


def test_tiny_config_helper():
    cfg = tiny_config()
    assert cfg.train.total_steps == 16 and cfg.model.kwargs["widths"] == [32]


def test_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launchers = {}
    for launcher in ("slurm", "slurm_multigpu"):
        cfg = compose([f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert "submitit" in cfg.hydra.launcher._target_.lower()
        assert cfg.hydra.launcher.gpus_per_node >= 1
        launchers[launcher] = OmegaConf.to_container(cfg.hydra.launcher)
    # slurm_multigpu is slurm.yaml (which it includes) with one task per GPU on 8 GPUs.
    multi = {"tasks_per_node": 8, "gpus_per_node": 8, "mem_gb": 256}
    assert launchers["slurm_multigpu"] == {**launchers["slurm"], **multi}
    assert launchers["slurm"]["timeout_min"] == 720
