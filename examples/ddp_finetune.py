"""Fine-tune with DDP on 2 CPU processes (gloo), kill-safe, and check that the ranks agree.

    python examples/ddp_finetune.py [OUTDIR]

Trains a small backbone + head on generated data with ``freeze_unfreeze`` (backbone unfrozen at
epoch 1) under ``strategy="ddp"``; Lightning starts the second process by running this script
again. The run keeps ``last.ckpt``; a second call resumes from it with ``ckpt_path="last"``
(training more epochs only if ``max_epochs`` was raised). At the end every rank prints the
largest difference between its weights and rank 0's: 0.0 when DDP stayed in step.
On GPUs use ``accelerator="gpu", devices=N`` (and ``sync_batchnorm=True`` for BatchNorm models).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.head(self.backbone(x)), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        # only what is trainable now; the strategy adds the backbone's param group when it unfreezes
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=generator)
    y = (x[:, :3].argmax(dim=1)).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, num_workers=0)


def main(out: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=3,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    model = Classifier()
    resume = "last" if (out / "checkpoints" / "last.ckpt").exists() else None
    trainer.finetune(model, data(), strategy=("freeze_unfreeze", 1), ckpt_path=resume)

    # every rank compares its weights with rank 0's
    worst = 0.0
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        worst = max(worst, (tensor - reference).abs().max().item())
    trainable = all(p.requires_grad for p in model.parameters())
    rank = trainer.global_rank
    # flushed now: a rank's buffered output is lost if its process dies in the teardown below
    print(f"rank {rank}: max difference from rank 0 = {worst}; everything trainable: {trainable}", flush=True)
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to interpreter exit can abort the process


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "ddp_finetune_output"))
