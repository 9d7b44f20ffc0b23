"""The FTS peer benchmark and the fixed-vs-plateau quality benchmark run end to end at tiny sizes.

Only the code paths and exact facts are checked (same trainable parameters per epoch in both peers,
same optimizer state, identical ranks for ours, the plateau row's transition within its cap); the
step-time ratios and accuracies belong to the benchmarks' own reports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks.config import SMOKE  # noqa: E402
from benchmarks.fts_peer import UNFREEZE_EPOCH, backbone_without_batchnorm, paired_ratio  # noqa: E402
from benchmarks.plateau_quality import FIXED, run_plateau_quality  # noqa: E402
from benchmarks.transfer_quality import ON_PLATEAU, PLATEAU  # noqa: E402
from benchmarks.workload import BenchModel  # noqa: E402
from finetune_strategies.demo.experiment import DemoSettings  # noqa: E402

HAS_FTS = importlib.util.find_spec("finetuning_scheduler") is not None


def test_paired_ratio_is_the_median_of_per_pair_ratios() -> None:
    result = paired_ratio([[2.0, 3.0], [4.0, 100.0]], [[1.0, 1.0], [1.0, 1.0]])
    assert result["ratio"] == pytest.approx(12**0.5)  # the median of the logarithms: sqrt(3 * 4)
    assert result["pairs"] == 4
    lowest, highest = 2.0 * (1 - 1e-9), 100.0 * (1 + 1e-9)  # computed on logarithms: rounding at the ends
    assert lowest <= result["low"] <= result["ratio"] <= result["high"] <= highest


def test_backbone_without_batchnorm_names_what_train_bn_false_unfreezes() -> None:
    model = BenchModel(SMOKE)  # test_resnet: BatchNorm in its deep stem and in every block
    names = set(backbone_without_batchnorm(model))
    backbone = [name for name, _ in model.named_parameters() if name.startswith("backbone.")]
    owners = {name: type(model.get_submodule(name.rsplit(".", 1)[0])) for name in backbone}
    assert nn.BatchNorm2d in owners.values()
    assert names == {name for name, owner in owners.items() if owner is not nn.BatchNorm2d}


@pytest.mark.skipif(not HAS_FTS, reason="finetuning-scheduler is not installed (pip install '.[peers]')")
def test_fts_peer_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    command = [sys.executable, "-m", "benchmarks.fts_peer", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "fts_peer.json").read_text())
    speed = payload["speed"]
    config = payload["config"]
    for phase in ("frozen", "unfrozen"):
        assert speed["phases"][phase]["pairs"] == config["steps"] * config["rounds"]
    # the same schedule: head only, then head and the backbone outside BatchNorm, in both
    model = BenchModel(SMOKE)
    head = sum(p.numel() for p in model.head.parameters())
    params = dict(model.named_parameters())
    unfrozen = head + sum(params[name].numel() for name in backbone_without_batchnorm(model))
    assert speed["trainable"] == {"ours": [head, unfrozen], "fts": [head, unfrozen]}
    assert speed["optimizer"]["ours"] == speed["optimizer"]["fts"]
    assert speed["optimizer"]["ours"]["bytes"] > 0
    ddp = payload["ddp"]
    assert len(ddp["ours"]) == len(ddp["fts"]) == 3
    assert all(epoch == {"backbone": 0.0, "head": 0.0} for epoch in ddp["ours"])  # ours: ranks identical
    assert ddp["fts"][UNFREEZE_EPOCH - 1]["backbone"] == 0.0  # before the unfreeze, FTS too
    assert "| unfrozen |" in (tmp_path / "fts_peer.md").read_text()


def test_plateau_quality_smoke(tmp_path: Path) -> None:
    payload = run_plateau_quality(tmp_path, smoke=True, seeds=[0])
    rows = {row["strategy"]: row for row in payload["rows"]}
    fast = DemoSettings.fast()
    assert rows[FIXED]["per_seed"]["transition_epoch"] == [fast.unfreeze_epoch]
    (plateau_epoch,) = rows[ON_PLATEAU]["per_seed"]["transition_epoch"]
    assert plateau_epoch is not None
    # the earliest plateau: best at epoch 0, no improvement at 1 and 2 (patience 2); at the latest, the cap
    assert PLATEAU["patience"] + 1 <= plateau_epoch <= 2 * fast.unfreeze_epoch
    assert rows[FIXED]["vs_fixed"] == {"mean": 0.0, "std": 0.0}
    assert 0.0 <= rows[ON_PLATEAU]["test_acc"]["mean"] <= 1.0
    assert rows[ON_PLATEAU]["transition_epoch"] == {"mean": plateau_epoch, "std": 0.0}
    assert (tmp_path / "plateau_quality.md").read_text().count("| freeze_unfreeze") == 2
