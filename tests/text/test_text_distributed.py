"""The text task across processes: 2-rank DDP with gradual unfreezing, and a run killed in the middle."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from ddp_helpers import WORLD, assert_bitwise_equal, kill_when_ready, launch, load_ranks, max_diff, run_script

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "text_worker.py"
ENCODER_LAYERS = ["model.bert.pooler", "model.bert.encoder.layer.1", "model.bert.encoder.layer.0"]


def test_ddp_gradual_unfreeze_keeps_both_ranks_identical_after_every_epoch(tmp_path: Path) -> None:
    run_script(str(WORKER), "ddp", str(tmp_path), timeout=600)
    vocabularies = [json.loads((tmp_path / f"vocab.rank{r}.json").read_text()) for r in range(WORLD)]
    assert vocabularies[0] == vocabularies[1]  # each rank built the same tokenizer from the texts
    ranks = load_ranks(tmp_path / "ddp")
    assert len(ranks[0]["epochs"]) == 5
    assert [max_diff(a, b) for a, b in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True)] == [0.0] * 5
    first, _ = ranks
    names = [name for name, _, _ in first["groups"]]
    assert names == [None, *ENCODER_LAYERS, "model.bert.embeddings"]
    lrs = [lr for _, lr, _ in first["groups"]][1:]
    assert [b / a for a, b in itertools.pairwise(lrs)] == [0.5, 0.5, 0.5]
    embeddings = "model.bert.embeddings.word_embeddings.weight"
    assert torch.equal(first["epochs"][3][embeddings], first["initial"][embeddings])  # frozen until epoch 4
    assert not torch.equal(first["final"][embeddings], first["initial"][embeddings])
    assert all(first["requires_grad"].values())


def test_a_run_killed_in_the_middle_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    kill_when_ready(launch(str(WORKER), "killed", str(tmp_path), merge_output=True), tmp_path / "ready")
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1  # killed in epoch 2: the last checkpoint is epoch 1's, after the first unfreeze
    run_script(str(WORKER), "resume", str(tmp_path), timeout=600)
    resumed = torch.load(tmp_path / "resumed.rank0.pt", weights_only=False)
    full = torch.load(tmp_path / "full.rank0.pt", weights_only=False)
    assert (len(resumed["epochs"]), len(full["epochs"])) == (2, 4)  # it resumed, it did not restart
    assert_bitwise_equal(resumed["final"], full["final"], "weights")
    assert_bitwise_equal(resumed["optimizer"], full["optimizer"], "optimizer")
    assert resumed["groups"] == full["groups"]
