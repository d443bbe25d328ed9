"""dsb.registry: the one lookup and option check behind models, evaluators and datasets."""

import pytest

from dsb.data.registry import DATASETS, DatasetSpec
from dsb.evals.base import EVALUATORS, check_evaluator_options
from dsb.models.registry import MODELS, check_model_kwargs
from dsb.registry import Registry


def _toy():
    reg = Registry("widget", config_key="widget.name")

    @reg.register("plain")
    def plain(*, size: int, colour: str = "red"):
        return (size, colour)

    class Loose:
        def __init__(self, ctx, **anything):
            self.anything = anything

    reg.register("loose", Loose)
    return reg


def test_lookup_build_and_errors_name_the_key():
    reg = _toy()
    assert reg.names() == ["loose", "plain"] and "plain" in reg and "nope" not in reg
    assert reg.build("plain", size=3) == (3, "red")
    with pytest.raises(ValueError, match=r"widget.name='nope': unknown widget 'nope'; "):
        reg.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("plain", object)


def test_options_are_checked_against_the_signature():
    reg = _toy()
    reg.check_options("w", "plain", {"size": 1, "colour": "blue"})
    with pytest.raises(ValueError, match=r"w.shape: widget 'plain' has no such option; "):
        reg.check_options("w", "plain", {"shape": 1})
    with pytest.raises(ValueError, match=r"w.size is set by the trainer"):
        reg.check_options("w", "plain", {"size": 1}, reserved={"size"})
    reg.check_options("w", "loose", {"whatever": 1}, reserved={"ctx"})  # takes **kwargs
    with pytest.raises(ValueError, match=r"w.ctx is set by the trainer"):
        reg.check_options("w", "loose", {"ctx": 1}, reserved={"ctx"})


def test_models_evaluators_and_datasets_share_it():
    for reg in (MODELS, EVALUATORS, DATASETS):
        assert isinstance(reg, Registry)
    # Every built-in is registered once the registry's module is imported.
    assert {"mlp", "lenet5", "resnet18", "transformer"} <= set(MODELS.names())
    assert EVALUATORS.names() == [
        "classification",
        "dsb_probes",
        "ngram_probes",
        "poly_approx",
        "sharpness",
        "training_jacobian",
    ]
    assert isinstance(DATASETS.get("digits"), DatasetSpec)
    with pytest.raises(ValueError, match=r"model.kwargs.depth: model 'mlp' has no such"):
        check_model_kwargs("mlp", {"depth": 3})
    with pytest.raises(ValueError, match=r"model.kwargs.rngs is set by the trainer"):
        check_model_kwargs("mlp", {"rngs": 3})
    with pytest.raises(ValueError, match=r"evals.v.when: evaluator type 'classification'"):
        check_evaluator_options("v", "classification", {"when": "last"})
    with pytest.raises(ValueError, match=r"data.name='svhn': unknown dataset"):
        DATASETS.get("svhn")


def test_every_extension_point_is_a_registry():
    from dsb.models.layers import ACTIVATIONS, get_activation
    from dsb.optim import OPTIMIZERS, SCHEDULES
    from dsb.plots import FIGURES
    from dsb.stats.maxent import SAMPLERS
    from dsb.stats.ot import OT_EDITS
    from dsb.stats.probesets import MAXENT_SETS, OT_SETS

    regs = (FIGURES, MAXENT_SETS, OT_SETS, OPTIMIZERS, SCHEDULES, ACTIVATIONS)
    for reg in regs:
        assert isinstance(reg, Registry)
        name = reg.names()[0]
        with pytest.raises(ValueError, match=f"{reg.kind} {name!r} is already registered"):
            reg.register(name, object())
        with pytest.raises(ValueError, match=f"unknown {reg.kind} 'nope'; registered: "):
            reg.get("nope")
    assert SAMPLERS is MAXENT_SETS and OT_EDITS is OT_SETS  # the older names
    assert FIGURES.names() == ["dsb_probes", "ngram_probes", "poly_approx", "sharpness"]
    assert OPTIMIZERS.names() == ["adamw", "sgd"]
    assert SCHEDULES.names() == ["constant", "cosine", "warmup_cosine"]
    with pytest.raises(ValueError, match=r"optim.name='lion': unknown optimizer 'lion'"):
        OPTIMIZERS.get("lion")
    with pytest.raises(ValueError, match=r"unknown activation 'gelu2'; registered: elu, gelu"):
        get_activation("gelu2")
    # A lookup may name the config key it came from.
    with pytest.raises(ValueError, match=r"evals.dsb.maxent_sets\[0\]='x': unknown max-ent"):
        MAXENT_SETS.get("x", config_key="evals.dsb.maxent_sets[0]")


def test_copy_is_independent():
    reg = _toy()
    other = reg.copy()
    other.register("extra", object())
    assert "extra" in other and "extra" not in reg and other.kind == reg.kind
