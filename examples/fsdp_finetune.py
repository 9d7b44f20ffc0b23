"""Fine-tune with FSDP2 on 2 CPU processes (gloo): sharded parameters, kill-safe sharded checkpoints.

    python examples/fsdp_finetune.py [OUTDIR] [MAX_EPOCHS]

Builds a backbone + head on the meta device (nothing is allocated until it is sharded),
shards every block and the head with ``fully_shard`` in ``configure_model`` under Lightning's
``ModelParallelStrategy``, and trains with ``freeze_unfreeze`` (backbone unfrozen at epoch 1).
Lightning starts the second process by running this script again. Checkpoints are folders of
shards (``checkpoints/last.ckpt/``); a second call resumes from it with ``ckpt_path="last"``,
training on up to ``MAX_EPOCHS`` (default 3). At the end every rank prints how much of the model
it holds and which parameters have optimizer state. On GPUs use ``accelerator="gpu"``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            *[nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32), nn.ReLU()) for _ in range(4)]
        )
        self.head = nn.Linear(32, 3)

    def configure_model(self) -> None:
        # one FSDP unit per block: a block is frozen or trainable as a whole, and is gathered only for its
        # own forward and backward; the root unit takes what is left
        mesh = self.device_mesh["data_parallel"]
        for block in [*self.backbone, self.head]:
            fully_shard(block, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)  # through forward: FSDP2 gathers in its hooks
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        # only what is trainable now; the strategy adds the backbone's param group when it unfreezes
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=generator)
    y = (x[:, :3].argmax(dim=1)).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, num_workers=0)


def main(out: Path, max_epochs: int) -> None:
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_epochs=max_epochs,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    with trainer.init_module(empty_init=True):  # on the meta device; materialised shard by shard
        model = Classifier()
    resume = "last" if (out / "checkpoints" / "last.ckpt").exists() else None
    trainer.finetune(model, data(), strategy=("freeze_unfreeze", 1), ckpt_path=resume)

    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    with_state = sum(1 for p in trainer.optimizers[0].state if id(p) in names)
    trainable = all(p.requires_grad for p in model.parameters())
    print(  # flushed now: a rank's buffered output is lost if its process dies in the teardown below
        f"rank {trainer.global_rank}: epoch {trainer.current_epoch}, resumed: {resume is not None}; holds {held} of "
        f"{total} parameter elements; optimizer state for {with_state} of {len(names)} parameters; "
        f"everything trainable: {trainable}",
        flush=True,
    )
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to interpreter exit can abort the process


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "fsdp_finetune_output"), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    )
