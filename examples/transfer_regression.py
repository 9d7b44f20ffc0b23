"""Transfer learning on a potential-energy curve: pretrain on a cheap approximation, fine-tune on 10 points.

The accurate curve is a Morse potential. The cheap approximation is a Morse potential with other
parameters, as a low-level method would give: same shape, wrong depth, width and minimum. An MLP is
pretrained on 200 cheap points, then fine-tuned in stages on 10 accurate points, as MLatom does:

1. ``fix_first_last``: the first and last linear layers (``net.0`` and ``net.4``) are frozen, the
   optimizer is reset and the learning rate is 10x smaller than in pretraining;
2. ``all_layers``: everything trains, with a 10x smaller learning rate again.

For comparison, on the same 10 points and for the same number of epochs:

* the pretrained MLP fine-tuned whole (``no_freeze``) at the first stage's learning rate; the same with
  L2-SP (``l2_sp``: a pull toward the pretrained weights); and WiSE-FT of the plain fine-tuned MLP, a fixed
  halfway interpolation with the pretrained weights (nothing here could choose ``a``: the only held-out
  data is the curve every row is scored on);
* an MLP trained from scratch.

The error of each over the whole domain is averaged over several seeds (each seed draws other points and
another initialisation).

    python examples/transfer_regression.py            # 5 seeds, full length
    python examples/transfer_regression.py --fast     # CI: 2 seeds, short runs

The stages come from ``examples/transfer_regression.yaml``, which also runs on its own through the CLI:
``finetune-strategies transfer --config examples/transfer_regression.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import Trainer, wise_ft
from finetune_strategies.checkpointing.weights import read_state_dict
from finetune_strategies.transfer import run_transfer_learning

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "transfer_regression.yaml"
R_MIN, R_MAX = 0.6, 3.0
PRETRAINING = {"n_points": 200, "batch_size": 50, "max_epochs": 300}
L2_SP = 0.01  # alpha, set before any run (no data is left to choose it on)
WISE_A = 0.5  # WiSE-FT's fixed halfway point


def morse(r: torch.Tensor, depth: float, width: float, r0: float) -> torch.Tensor:
    return depth * (1 - torch.exp(-width * (r - r0))) ** 2 - depth


def accurate(r: torch.Tensor) -> torch.Tensor:
    """The expensive reference curve."""
    return morse(r, depth=1.0, width=1.5, r0=1.0)


def cheap(r: torch.Tensor) -> torch.Tensor:
    """A cheap approximation: right shape, wrong parameters."""
    return morse(r, depth=0.8, width=1.2, r0=1.15)


def to_input(r: torch.Tensor) -> torch.Tensor:
    """Scale r from [R_MIN, R_MAX] to [-1, 1]."""
    return (2 * (r - R_MIN) / (R_MAX - R_MIN) - 1).unsqueeze(-1)


class MLPRegressor(pl.LightningModule):
    """A small MLP, 1 -> hidden -> hidden -> 1, with tanh activations, trained with MSE and Adam."""

    def __init__(self, hidden: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("domain_rmse", nn.functional.mse_loss(self(x), y).sqrt())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


class CurveData(pl.LightningDataModule):
    """``n_points`` random points of the ``fidelity`` curve for training; the accurate curve on a
    dense grid over the whole domain for validation."""

    def __init__(self, fidelity: str = "accurate", n_points: int = 10, seed: int = 0, batch_size: int = 16) -> None:
        super().__init__()
        if fidelity not in ("accurate", "cheap"):
            raise ValueError(f"fidelity must be 'accurate' or 'cheap', got {fidelity!r}.")
        self.fidelity = fidelity
        self.n_points = n_points
        self.seed = seed
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        r = R_MIN + (R_MAX - R_MIN) * torch.rand(self.n_points, generator=generator)
        curve = accurate if self.fidelity == "accurate" else cheap
        return DataLoader(TensorDataset(to_input(r), curve(r)), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        r = torch.linspace(R_MIN, R_MAX, 500)
        return DataLoader(TensorDataset(to_input(r), accurate(r)), batch_size=500)


def domain_rmse(model: nn.Module) -> float:
    """RMSE against the accurate curve on 2000 points spread over the whole domain."""
    r = torch.linspace(R_MIN, R_MAX, 2000)
    model.eval()
    with torch.no_grad():
        return float(((model(to_input(r)) - accurate(r)) ** 2).mean().sqrt())


def quiet_trainer(max_epochs: int, root: Path) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )


def load_config(fast: bool) -> dict[str, Any]:
    """The CLI config, plus the pretraining settings; with ``fast`` every run is 5x shorter."""
    config = yaml.safe_load(CONFIG.read_text())
    config["pretraining"] = dict(PRETRAINING)
    if fast:
        for section in [config["pretraining"], *(s.get("trainer", {}) for s in config["transfer"]["stages"])]:
            if "max_epochs" in section:
                section["max_epochs"] = max(1, section["max_epochs"] // 5)
        trainer = config["transfer"]["trainer"]
        trainer["max_epochs"] = max(1, trainer["max_epochs"] // 5)
    return config


def stage_epochs(transfer: dict[str, Any]) -> int:
    base = transfer.get("trainer", {}).get("max_epochs", 0)
    return sum(stage.get("trainer", {}).get("max_epochs", base) for stage in transfer["stages"])


def pretrain(config: dict[str, Any], seed: int, path: Path) -> MLPRegressor:
    """Pretrain on the cheap curve and save the weights as safetensors."""
    settings = config["pretraining"]
    pl.seed_everything(seed, verbose=False)
    model = MLPRegressor(**config["model"]["init_args"])
    data = CurveData("cheap", n_points=settings["n_points"], seed=1000 + seed, batch_size=settings["batch_size"])
    quiet_trainer(settings["max_epochs"], path.parent).fit(model, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def run_seed(config: dict[str, Any], seed: int, work: Path) -> dict[str, float]:
    data_args = {**config["data"]["init_args"], "seed": seed}
    pretrained_path = work / f"seed{seed}" / "pretrained.safetensors"
    pretrained = pretrain(config, seed, pretrained_path)

    transfer = copy.deepcopy(config["transfer"])
    transfer["pre_trained_model_path"] = str(pretrained_path)
    transfer["output_dir"] = str(work / f"seed{seed}" / "transfer")
    transfer["seed"] = seed
    transfer.setdefault("trainer", {}).update(logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = run_transfer_learning(transfer, MLPRegressor(**config["model"]["init_args"]), CurveData(**data_args))
    errors = {"pretrained on cheap data only": domain_rmse(pretrained)}
    after_first = MLPRegressor(**config["model"]["init_args"])
    after_first.load_state_dict(torch.load(result.stages[0].checkpoint, weights_only=True)["state_dict"])
    errors[f"transfer, stage 1 only ({result.stages[0].name})"] = domain_rmse(after_first)
    errors["transfer, all stages"] = domain_rmse(result.model)

    epochs, stage_lr = stage_epochs(config["transfer"]), config["transfer"]["optimizer"]["init_args"]["lr"]
    pretrained_weights = read_state_dict(pretrained_path)
    for name, l2_sp in (("fine-tuned whole (no_freeze)", None), (f"fine-tuned whole, l2_sp={L2_SP:g}", L2_SP)):
        pl.seed_everything(seed, verbose=False)
        model = MLPRegressor(**{**config["model"]["init_args"], "lr": stage_lr})
        model.load_state_dict(pretrained_weights)
        trainer = quiet_trainer(epochs, work / "whole")
        strategy = {"strategy": "no_freeze", "attr_names": "net", "l2_sp": l2_sp}
        trainer.finetune(model, CurveData(**data_args), strategy={k: v for k, v in strategy.items() if v is not None})
        errors[name] = domain_rmse(model)
        if l2_sp is None:  # WiSE-FT of this run: halfway back to the pretrained weights, no extra training
            wise_ft(trainer, model, pretrained_weights, WISE_A, validate=False, verbose=False)
            errors[f"fine-tuned whole + WiSE-FT (a={WISE_A:g})"] = domain_rmse(model)

    pl.seed_everything(seed, verbose=False)
    scratch = MLPRegressor(**config["model"]["init_args"])
    quiet_trainer(stage_epochs(config["transfer"]), work / "scratch").fit(scratch, CurveData(**data_args))
    errors["from scratch on the same points"] = domain_rmse(scratch)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="2 seeds and short runs (for CI).")
    parser.add_argument("--seeds", type=int, default=None, help="Number of seeds (default 5, or 2 with --fast).")
    parser.add_argument("--out", type=Path, default=None, help="Working folder (default: a temporary one).")
    parser.add_argument(
        "--export-pretrained",
        type=Path,
        default=None,
        help="Only pretrain (seed 0) and write the weights here, e.g. examples/data/...safetensors.",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny MLP: more threads only add overhead
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    config = load_config(args.fast)
    if args.export_pretrained is not None:
        pretrain(config, 0, args.export_pretrained)
        print(f"wrote {args.export_pretrained}")
        return 0
    seeds = args.seeds or (2 if args.fast else 5)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.out or Path(temporary)
        runs = [run_seed(config, seed, work) for seed in range(seeds)]
    points = config["data"]["init_args"]["n_points"]
    print(
        f"\nRMSE against the accurate curve over the whole domain, {points} accurate training points, "
        f"mean ± std over {seeds} seeds ({time.perf_counter() - start:.0f} s):\n"
    )
    print("| model | domain RMSE |")
    print("| --- | --- |")
    for name in runs[0]:
        values = [run[name] for run in runs]
        spread = statistics.stdev(values) if len(values) > 1 else math.nan
        print(f"| {name} | {statistics.mean(values):.4f} ± {spread:.4f} |")
    wins = sum(run["transfer, all stages"] < run["from scratch on the same points"] for run in runs)
    print(f"\nStaged transfer learning beat training from scratch in {wins} of {seeds} seeds.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
