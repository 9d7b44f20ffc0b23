"""Spec resolution, the registry, and its errors; fuzzed with hypothesis."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import BaseFinetuning

from finetune_strategies import (
    BackboneFinetuningStrategy,
    Finetuner,
    FinetuningStrategy,
    Freeze,
    FreezeUnfreeze,
    MissingDependencyError,
    NoFreeze,
    StrategySpecError,
    StrategySpecTypeError,
    UnfreezeMilestones,
    available_strategies,
    register_strategy,
    resolve_strategy,
    unregister_strategy,
)

BUILT_INS = [
    "backbone_finetuning",
    "freeze",
    "freeze_unfreeze",
    "gradual_unfreeze",
    "lora",
    "lp_ft",
    "no_freeze",
    "phases",
    "surgical",
    "unfreeze_milestones",
]


def test_available_strategies_lists_built_ins_and_deepspeed_variants() -> None:
    assert available_strategies() == sorted(BUILT_INS + [f"{n}_deepspeed" for n in BUILT_INS])


@pytest.mark.parametrize(
    ("spec", "cls", "attrs"),
    [
        ("no_freeze", NoFreeze, {}),
        ("freeze", Freeze, {"train_bn": True}),
        (("freeze_unfreeze", 7), FreezeUnfreeze, {"unfreeze_epoch": 7}),
        (["freeze_unfreeze", 7], FreezeUnfreeze, {"unfreeze_epoch": 7}),
        (("unfreeze_milestones", ((3, 8), 2)), UnfreezeMilestones, {"milestones": (3, 8), "num_layers": 2}),
        ({"strategy": "freeze_unfreeze", "unfreeze_epoch": 7}, FreezeUnfreeze, {"unfreeze_epoch": 7}),
        ({"strategy": "unfreeze_milestones", "milestones": [3, 8], "num_layers": 2}, UnfreezeMilestones, {}),
        (("freeze_unfreeze_deepspeed", 4), FreezeUnfreeze, {"preregister_groups": True, "unfreeze_epoch": 4}),
        (("backbone_finetuning", 3), BackboneFinetuningStrategy, {"unfreeze_backbone_at_epoch": 3}),
        ("freeze", Freeze, {"preregister_groups": False}),
    ],
)
def test_resolves(spec: Any, cls: type, attrs: dict[str, Any]) -> None:
    callback = resolve_strategy(spec)
    assert type(callback) is cls
    for key, value in attrs.items():
        assert getattr(callback, key) == value


def test_instance_is_used_as_is_and_takes_no_options() -> None:
    callback = FreezeUnfreeze(3)
    assert resolve_strategy(callback) is callback
    assert Finetuner(callback).resolve() is callback
    with pytest.raises(TypeError, match="cannot be applied to a callback instance"):
        Finetuner(callback, train_bn=False)


def test_finetuner_options() -> None:
    callback = Finetuner(strategy="freeze_unfreeze_deepspeed", train_bn=False).callback
    assert isinstance(callback, FreezeUnfreeze)
    assert callback.train_bn is False
    assert callback.preregister_groups is True
    assert "FreezeUnfreeze" in repr(Finetuner("freeze_unfreeze"))


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            "frezee",
            ValueError,
            r"Unknown fine-tuning strategy 'frezee'\. Did you mean 'freeze'\? Available: backbone_finetuning,",
        ),
        (("freeze_unfreez", 3), ValueError, "Did you mean 'freeze_unfreeze'"),
        (
            ("freeze_unfreeze", True),
            TypeError,
            r"must be an int epoch.*got True.*like \(\"freeze_unfreeze\", 7\)",
        ),
        (("freeze_unfreeze", 1.5), TypeError, "must be an int epoch"),
        (("freeze_unfreeze", -1), ValueError, ">= 0"),
        (("freeze_unfreeze", "7"), TypeError, "must be an int epoch"),
        (("unfreeze_milestones", (3, 8)), TypeError, r"takes \(\(e1, e2\), num_layers\), e\.g\."),
        (("unfreeze_milestones", ((8, 3), 2)), ValueError, "e1 < e2"),
        (("unfreeze_milestones", ((3, 3), 2)), ValueError, "e1 < e2"),
        (("unfreeze_milestones", ((-1, 3), 2)), ValueError, ">= 0"),
        (("unfreeze_milestones", ((1, 3), 0)), ValueError, "num_layers` must be >= 1"),
        (("unfreeze_milestones", ((1, 3, 5), 2)), TypeError, "two epochs"),
        (("unfreeze_milestones", ((1, True), 2)), TypeError, "must be an int epoch"),
        (("freeze", 3), TypeError, "takes no metadata"),
        (("freeze", 3, 4), TypeError, r"must be \(name, metadata\)"),
        ((3, "freeze"), TypeError, "first item of a strategy tuple must be the strategy name"),
        ({"unfreeze_epoch": 3}, TypeError, 'needs a "strategy" key'),
        ({"strategy": "freeze", "bogus": 1}, TypeError, r"does not take \['bogus'\]\. It takes: attr_names"),
        ({"strategy": "freeze", "train_bn": "no"}, TypeError, "train_bn` must be True or False"),
        ({"strategy": "freeze_unfreeze_deepspeed", "preregister_groups": False}, TypeError, "given twice"),
        (None, TypeError, "A strategy must be a name"),
        (7, TypeError, "A strategy must be a name"),
        (FreezeUnfreeze, TypeError, "A strategy must be a name"),
    ],
)
def test_errors(spec: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_strategy(spec)


def test_metadata_and_option_clash() -> None:
    with pytest.raises(TypeError, match="given twice"):
        resolve_strategy(("freeze_unfreeze", 3), unfreeze_epoch=4)


@pytest.fixture
def custom_name() -> Iterator[str]:
    yield "my_warmup"
    if "my_warmup" in available_strategies():
        unregister_strategy("my_warmup")


def test_register_decorator(custom_name: str) -> None:
    @register_strategy(custom_name)
    class Warmup(FreezeUnfreeze):
        """Unfreeze after one epoch by default."""

        def __init__(self, unfreeze_epoch: int = 1, **options: Any) -> None:
            super().__init__(unfreeze_epoch, **options)

    assert custom_name in available_strategies()
    assert isinstance(resolve_strategy(custom_name), Warmup)
    assert resolve_strategy((custom_name, 4)).unfreeze_epoch == 4  # type: ignore[attr-defined]
    assert resolve_strategy(custom_name, train_bn=False).train_bn is False  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="already registered"):
        register_strategy(custom_name)(Freeze)
    register_strategy(custom_name, override=True)(Freeze)
    assert type(resolve_strategy(custom_name)) is Freeze


def test_register_a_deepspeed_variant(custom_name: str) -> None:
    register_strategy(custom_name, deepspeed_variant=True, train_bn=False)(Freeze)
    try:
        plain, variant = resolve_strategy(custom_name), resolve_strategy(f"{custom_name}_deepspeed")
        assert type(plain) is Freeze
        assert type(variant) is Freeze
        assert (plain.preregister_groups, plain.train_bn) == (False, False)
        assert (variant.preregister_groups, variant.train_bn) == (True, False)
        # a taken variant name refuses the whole registration: the plain name is not registered halfway
        unregister_strategy(custom_name)
        with pytest.raises(ValueError, match=f"'{custom_name}_deepspeed' is already registered"):
            register_strategy(custom_name, deepspeed_variant=True)(NoFreeze)
        assert custom_name not in available_strategies()
    finally:
        unregister_strategy(f"{custom_name}_deepspeed")


def test_register_plain_factory(custom_name: str) -> None:
    register_strategy(custom_name)(lambda **kw: Freeze(attr_names="encoder", **kw))
    assert resolve_strategy(custom_name).attr_names == ("encoder",)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="takes no metadata"):
        resolve_strategy((custom_name, 1))


def test_register_rejects_bad_input(custom_name: str) -> None:
    with pytest.raises(TypeError, match="non-empty string"):
        register_strategy("")
    with pytest.raises(TypeError, match="needs a callable"):
        register_strategy(custom_name)(42)  # type: ignore[type-var]
    register_strategy(custom_name)(lambda: object())
    with pytest.raises(TypeError, match="not a lightning BaseFinetuning"):
        resolve_strategy(custom_name)
    with pytest.raises(ValueError, match="Unknown"):
        unregister_strategy("never_registered")


# --- fuzzing -----------------------------------------------------------------------------------
names = st.sampled_from(available_strategies()) | st.text(max_size=12)
scalars = st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=True) | st.text(max_size=5)
metadata = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3), max_leaves=6)
option_values = scalars | st.lists(st.integers(-1, 5), max_size=3) | st.tuples(st.integers(-1, 9), st.integers(-1, 9))
option_keys = st.sampled_from(
    [
        "unfreeze_epoch",
        "milestones",
        "num_layers",
        "train_bn",
        "bn_eval",
        "lr",
        "initial_denom_lr",
        "attr_names",
        "layer_unit",
        "optimizer_index",
        "preregister_groups",
        "bogus",
    ]
)
specs = (
    names
    | st.tuples(names, metadata)
    | st.tuples(scalars, scalars)
    | st.lists(metadata, max_size=3)
    | st.dictionaries(option_keys, option_values, max_size=3).map(lambda d: d)
    | st.builds(lambda n, d: {"strategy": n, **d}, names, st.dictionaries(option_keys, option_values, max_size=3))
    | scalars
)


@settings(max_examples=400, deadline=None)
@given(spec=specs, train_bn=st.none() | st.booleans() | st.integers(0, 2))
def test_fuzz_resolves_or_raises_documented_errors(spec: Any, train_bn: Any) -> None:
    try:
        callback = resolve_strategy(spec, train_bn=train_bn)
    except (StrategySpecError, StrategySpecTypeError):
        return
    except MissingDependencyError:
        # Only the optional extras may be missing, and only where they are not installed.
        assert importlib.util.find_spec("peft") is None
        return
    assert isinstance(callback, BaseFinetuning)
    assert isinstance(callback, FinetuningStrategy)
