"""The one weight-file loader: every format, unwrapping, prefixes, refusing pickles, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PicklePayload
from safetensors.torch import save_file
from torch import nn

from finetune_strategies.checkpointing.weights import WEIGHT_SUFFIXES, read_state_dict, state_dict_of
from finetune_strategies.errors import MissingPathError, PretrainedWeightsError, WeightMatchError
from finetune_strategies.image.weight_files import read_weights
from finetune_strategies.transfer import load_pretrained_state_dict


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", WEIGHT_SUFFIXES)
def test_every_supported_format_reads_the_same_state_dict(tmp_path, state, suffix) -> None:
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".ckpt":  # what Lightning writes
        torch.save({"pytorch-lightning_version": "2.0", "epoch": 3, "state_dict": state}, path)
    else:
        torch.save(state, path)
    assert _same(read_state_dict(path), state)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": s, "optimizer": {"lr": 0.1}},
        lambda s: {"model": s, "epoch": 3},
        lambda s: {"state_dict": {k: torch.zeros_like(v) for k, v in s.items()}, "state_dict_ema": s},  # EMA first
        lambda s: {f"module.{k}": v for k, v in s.items()},  # DDP
        lambda s: {f"_orig_mod.module.{k}": v for k, v in s.items()},  # compiled DDP model
    ],
)
def test_wrappers_and_prefixes_are_removed(tmp_path, state, wrap) -> None:
    torch.save(wrap(state), tmp_path / "w.pt")
    assert _same(read_state_dict(tmp_path / "w.pt"), state)


def test_prefixes_stay_unless_every_key_has_them_and_in_a_lightning_checkpoint(state) -> None:
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert set(state_dict_of(mixed, "x")) == {"module.a", "b"}
    lightning = {"pytorch-lightning_version": "2.0", "state_dict": {f"module.{k}": v for k, v in state.items()}}
    assert set(state_dict_of(lightning, "x")) == {f"module.{k}" for k in state}  # an attribute named `module`


def test_image_and_transfer_read_through_the_same_loader(tmp_path, state) -> None:
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    assert _same(read_weights(tmp_path / "w.pth"), load_pretrained_state_dict(tmp_path / "w.pth"))


def test_a_pickle_does_not_run_without_opting_in(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": PicklePayload(marker)}, path)
    for read, error in ((read_state_dict, PretrainedWeightsError), (load_pretrained_state_dict, WeightMatchError)):
        with pytest.raises(error) as info:
            read(path)
        message = str(info.value)
        assert str(path) in message
        assert "weights_only=False" in message
        assert "trust" in message
        assert not marker.exists()
    # the file is really malicious: opting in runs its code
    with pytest.raises(PretrainedWeightsError, match="entries are not name -> tensor"):
        read_state_dict(path, weights_only=False)
    assert marker.exists()


def test_a_whole_module_needs_the_opt_in(tmp_path) -> None:
    torch.save(nn.Linear(2, 3), tmp_path / "module.pt")
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        read_state_dict(tmp_path / "module.pt")
    assert sorted(read_state_dict(tmp_path / "module.pt", weights_only=False)) == ["bias", "weight"]


def test_errors_name_the_file_and_the_cause_with_the_callers_error_class(tmp_path) -> None:
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(WeightMatchError, match=r"'.*w\.npz': unsupported file type '\.npz'; use one of \.pt, \.bin"):
        read_state_dict(tmp_path / "w.npz", suffixes=(".pt", ".bin"), error=WeightMatchError)
    with pytest.raises(MissingPathError, match=r"none\.pt' does not exist"):
        read_state_dict(tmp_path / "none.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PretrainedWeightsError, match=r"Cannot read weight file '.*bad\.safetensors' as safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightMatchError, match=r"Cannot read weight file '.*bad\.pt'"):
        read_state_dict(tmp_path / "bad.pt", error=WeightMatchError)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(PretrainedWeightsError, match=r"list\.pt' does not hold a state dict.*got list"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(PretrainedWeightsError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "empty.pt")


def test_random_bytes_are_reported_as_damaged_not_as_objects_to_trust(tmp_path: Path) -> None:
    from finetune_strategies.checkpointing.checkpoint_io import SafeCheckpointIO
    from finetune_strategies.errors import CheckpointError

    path = tmp_path / "random.ckpt"
    path.write_bytes(bytes(range(100, 256)) * 20)  # 'd' (100) first: a pickle opcode torch's safe unpickler lacks
    with pytest.raises(CheckpointError, match=r"damaged or not a file torch\.save wrote") as info:
        SafeCheckpointIO().load_checkpoint(path)
    assert "would not help" in str(info.value)
    assert "If you trust the file" not in str(info.value)
