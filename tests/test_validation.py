"""The shared argument checks: default error classes, the caller's error class, and "did you mean" hints."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_strategies.errors import ModelConfigError, StrategySpecError, StrategySpecTypeError, TransferConfigError
from finetune_strategies.validation import (
    check_bool,
    check_epoch,
    check_int,
    check_known_keys,
    check_mapping,
    check_names,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    close_matches,
    did_you_mean,
)


def test_did_you_mean() -> None:
    assert did_you_mean("frezee", ["freeze", "no_freeze", "unfreeze_milestones"]) == " Did you mean 'freeze'?"
    assert did_you_mean("adam", ["adamw", "adamax", "sgd"], n=2) == " Did you mean 'adamw', 'adamax'?"
    assert did_you_mean("xyz", ["freeze"]) == ""
    assert did_you_mean("fz", ["freeze"]) == ""
    assert did_you_mean("fz", ["freeze"], cutoff=0.5) == " Did you mean 'freeze'?"
    assert close_matches("haed", iter(["head", "heads", "body"]), n=3) == ["head", "heads"]


def test_check_known_keys_lists_every_unknown_key_with_hints_and_the_allowed_ones() -> None:
    check_known_keys({"lr": 1}, ("lr", "momentum"), "optimizer")
    with pytest.raises(StrategySpecError) as info:
        check_known_keys(["lr", "momentun", "zzz"], ("lr", "momentum"), "optimizer")
    assert str(info.value) == (
        "optimizer: unknown key(s) 'momentun' (did you mean 'momentum'?), 'zzz'. Allowed keys: lr, momentum."
    )
    with pytest.raises(TransferConfigError, match="unknown key"):
        check_known_keys(["x"], ("y",), "stages[0]", error=TransferConfigError)


# (check, good value, what it returns, a value of the wrong type, a wrong value, message of the wrong value)
CASES: list[tuple[Any, Any, Any, Any, Any, str]] = [
    (check_bool, True, True, 1, None, ""),
    (check_epoch, 3, 3, 1.5, -1, r"`x` must be >= 0 \(epochs count from 0\), got -1\."),
    (check_positive_int, 2, 2, True, 0, r"`x` must be >= 1, got 0\."),
    (check_non_negative_int, 0, 0, "0", -1, r"`x` must be >= 0, got -1\."),
    (check_positive_float, 2, 2.0, "1", float("inf"), r"`x` must be a finite number > 0, got inf\."),
    (check_names, "backbone", ("backbone",), 3, None, ""),
    (check_mapping, {"a": 1}, {"a": 1}, [1], None, ""),
]


@pytest.mark.parametrize(("check", "good", "returned", "wrong_type", "wrong_value", "message"), CASES)
def test_checks_raise_the_default_classes_or_the_callers(check, good, returned, wrong_type, wrong_value, message):
    assert check("x", good) == returned
    with pytest.raises(StrategySpecTypeError, match=r"^`x` must be"):
        check("x", wrong_type)
    with pytest.raises(ModelConfigError, match=r"^`x` must be"):
        check("x", wrong_type, error=ModelConfigError)
    if wrong_value is not None:
        with pytest.raises(StrategySpecError, match=message) as info:
            check("x", wrong_value)
        assert not isinstance(info.value, TypeError)
        with pytest.raises(TransferConfigError, match=message):
            check("x", wrong_value, error=TransferConfigError)


def test_check_int_with_and_without_a_minimum() -> None:
    assert check_int("seed", -5) == -5
    with pytest.raises(StrategySpecTypeError, match=r"`seed` must be an int, got 'a' \(str\)\."):
        check_int("seed", "a")
    with pytest.raises(ModelConfigError, match=r"`num_classes` must be >= 2, got 1\."):
        check_int("num_classes", 1, minimum=2, error=ModelConfigError)
    with pytest.raises(ModelConfigError, match=r"`num_classes` must be an int >= 2, got 2\.0 \(float\)\."):
        check_int("num_classes", 2.0, minimum=2, error=ModelConfigError)


def test_check_positive_float_allows_zero_on_request() -> None:
    assert check_positive_float("wd", 0, allow_zero=True) == 0.0
    with pytest.raises(StrategySpecError, match=r"`wd` must be a finite number > 0, got 0"):
        check_positive_float("wd", 0)
    with pytest.raises(StrategySpecError, match=r">= 0, got nan"):
        check_positive_float("wd", float("nan"), allow_zero=True)


def test_check_mapping_shows_an_example() -> None:
    with pytest.raises(TransferConfigError, match=r"`trainer` must be a mapping with string keys, e.g. \{'max_epochs'"):
        check_mapping("trainer", {1: 2}, example="{'max_epochs': 5}", error=TransferConfigError)
