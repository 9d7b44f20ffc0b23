"""The shift benchmark: its data (disjoint splits, real shifts, seeded) and its smoke form end to end.

The smoke form checks that every row runs on every shift and that the table is well formed; the numbers
themselves belong to the full form (``python -m benchmarks.shift_bench``), never to a test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from benchmarks import shifts  # noqa: E402
from benchmarks.shift_bench import CHOOSER, FULL, ROWS, run_shift_bench  # noqa: E402
from finetune_strategies.demo.experiment import digits, split_classes  # noqa: E402

PRETRAIN, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def _split(shift: shifts.Shift, seed: int) -> tuple[shifts.ShiftSplit, list[int], list[int]]:
    images, targets = digits()
    held, seen = split_classes(targets, PRETRAIN, (30, None), np.random.default_rng(0))
    split = shifts.make_split(
        shift,
        images,
        targets,
        seed=seed,
        pretrain_classes=PRETRAIN,
        new_classes=NEW,
        pretrain_seen=seen,
        pretrain_held=held,
        shots=5,
        val_per_class=5,
        test_per_class=20,
    )
    return split, seen, held


@pytest.mark.parametrize("shift", shifts.SHIFTS)
def test_train_validation_and_test_are_disjoint_and_test_images_were_never_pretrained_on(shift: shifts.Shift) -> None:
    split, seen, held = _split(shift, seed=3)
    train, val, test = (set(part) for part in split.indices)
    assert not train & val
    assert not train & test
    assert not val & test
    assert (len(train), len(val), len(test)) == (25, 25, 100)
    _images, targets = digits()
    if shift == "output":
        assert {int(t) for t in targets[sorted(train | val | test)]} == set(NEW)
    else:
        assert test <= set(held), "the pretraining classes' test images are the ones the pretraining held out"
        assert train | val <= set(seen)
    for pixels, labels in (split.train, split.val, split.test, split.ood_test):
        assert pixels.dtype == np.uint8
        assert pixels.shape[1:] == (shifts.SIZE, shifts.SIZE)
        assert len(pixels) == len(labels)
        assert set(labels) <= set(range(5))
    assert split.test[1] == split.ood_test[1], "the out-of-distribution test shows the same images, shifted"
    assert not np.array_equal(split.test[0], split.ood_test[0])


def test_each_seed_draws_other_images_and_a_seed_draws_the_same_ones_again() -> None:
    first, _, _ = _split("input", seed=0)
    again, _, _ = _split("input", seed=0)
    other, _, _ = _split("input", seed=1)
    assert first.indices == again.indices
    assert np.array_equal(first.train[0], again.train[0])
    assert first.indices[0] != other.indices[0]


def test_corruptions_grow_with_severity_and_the_shifts_change_the_images() -> None:
    images, _ = digits()
    clean = shifts.upsample(images[:40])
    for name in ("noise", "blur"):
        corruption = shifts.CORRUPTIONS[name]
        change = [
            float(np.mean([np.abs(corruption(x, s, np.random.default_rng(0)) - x).mean() for x in clean]))
            for s in (1, 3, 5)
        ]
        assert change[0] < change[1] < change[2], (name, change)
    inverted = [shifts.invert(clean, s, np.random.default_rng(0)) for s in (1, 3, 5)]
    assert all(np.corrcoef(x.ravel(), clean.ravel())[0, 1] < -0.99 for x in inverted), "dark digits, light ground"
    contrast = [float(x.std()) for x in inverted]
    assert contrast[0] > contrast[1] > contrast[2], "less contrast at higher severity"
    hollow = np.stack([shifts.hollow(x) for x in clean])
    assert np.abs(hollow - clean).mean() > 0.05
    sheared = shifts.shear(clean[0])
    assert sheared.shape == clean[0].shape
    assert not np.allclose(sheared, clean[0])


def test_the_smoke_form_runs_every_row_on_every_shift_and_writes_the_table(tmp_path: Path) -> None:
    payload = run_shift_bench(tmp_path, smoke=True)
    rows = {row["method"]: row for row in payload["table"]}
    assert list(rows) == ["pretrained, not fine-tuned", *ROWS]
    for method in ROWS:
        for shift in shifts.SHIFTS:
            for key in ("acc", "ood_acc"):
                cell = rows[method][f"{shift}.{key}"]
                assert 0.0 <= cell["mean"] <= 1.0, (method, shift, key)
                assert len(rows[method][f"{shift}.{key}.per_seed"]) == 1
    assert rows[FULL]["input.acc.diff"]["mean"] == 0.0
    runs = payload["runs"]
    picks = [run["note"] for run in runs if run["method"] == CHOOSER]
    assert len(picks) == len(shifts.SHIFTS)
    assert all("probe steps" in pick for pick in picks)
    assert len(payload["layer_ranges"]) == 3
    text = (tmp_path / "shift_bench.md").read_text()
    assert "**In distribution**" in text
    assert "**Out of distribution**" in text
    assert all(f"| {method} |" in text for method in ROWS)
    assert json.loads((tmp_path / "shift_bench.json").read_text())["smoke"] is True
