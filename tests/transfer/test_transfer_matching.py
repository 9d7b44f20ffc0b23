"""Loading pretrained weights from every supported file type and matching them module by module."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transfer_tools import BASE_TRAINER, TinyData, TinyRegressor, one_thread, under, weights  # noqa: F401

from finetune_strategies.errors import WeightMatchError
from finetune_strategies.transfer import load_pretrained, load_pretrained_state_dict, match_pretrained_weights


def pretrained_model() -> TinyRegressor:
    return TinyRegressor(init_seed=1)


@pytest.fixture
def weight_files(tmp_path):
    """The same pretrained weights as .pt, .pth, .safetensors and a Lightning .ckpt from a real fit."""
    model = pretrained_model()
    trainer = pl.Trainer(**BASE_TRAINER)
    trainer.fit(model, TinyData())
    state = weights(model)
    torch.save(state, tmp_path / "w.pt")
    torch.save(state, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    trainer.save_checkpoint(tmp_path / "w.ckpt")
    return tmp_path, state


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".safetensors"])
def test_every_file_type_loads_everything_by_default(weight_files, suffix) -> None:
    folder, state = weight_files
    model = TinyRegressor(init_seed=2)
    report = load_pretrained(model, folder / f"w{suffix}")
    assert report.num_tensors == len(state) == 6
    assert report.num_values == sum(v.numel() for v in state.values())
    assert report.not_loaded == ()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert "Matched 6 tensors" in str(report)


def test_a_named_module_matches_all_its_children_only(weight_files) -> None:
    folder, state = weight_files
    model = TinyRegressor(init_seed=2)
    before = weights(model)
    report = load_pretrained(model, folder / "w.pt", {"backbone": "backbone"})
    assert report.num_tensors == 4
    assert sorted(name for _, name in report.pairs) == sorted(k for k, _ in under(state, "backbone"))
    after = model.state_dict()
    for key, value in under(state, "backbone"):
        assert torch.equal(after[key], value)
    assert torch.equal(after["head.weight"], before["head.weight"])
    assert set(report.not_loaded) == {"head.weight", "head.bias"}


def test_dotted_children_and_renamed_modules(weight_files) -> None:
    folder, state = weight_files
    model = TinyRegressor(init_seed=2)
    report = load_pretrained(model, folder / "w.safetensors", {"backbone.2": "backbone.2", "head": "head"})
    assert sorted(n for _, n in report.pairs) == [
        "backbone.2.bias",
        "backbone.2.weight",
        "head.bias",
        "head.weight",
    ]
    assert torch.equal(model.backbone[2].weight, state["backbone.2.weight"])
    assert not torch.equal(model.backbone[0].weight, state["backbone.0.weight"])

    # a plain nn.Module state dict goes under an attribute of the new model with "" (its root)
    plain = {k[len("backbone.") :]: v for k, v in under(state, "backbone")}
    fresh = TinyRegressor(init_seed=3)
    report = match_pretrained_weights(fresh, plain, {"": "backbone"})
    assert report.num_tensors == 4
    assert torch.equal(fresh.backbone[0].weight, state["backbone.0.weight"])


def test_shape_mismatch_names_module_tensor_and_both_shapes(weight_files) -> None:
    folder, _ = weight_files
    wider = TinyRegressor(width=16, init_seed=2)
    before = weights(wider)
    with pytest.raises(WeightMatchError) as error:
        load_pretrained(wider, folder / "w.pt", {"backbone.0": "backbone.0"})
    message = str(error.value)
    assert "`backbone.0` -> `backbone.0`" in message
    assert "tensor `backbone.0.weight` has shape (8, 3) in the pretrained weights" in message
    assert "`backbone.0.weight` has shape (16, 3) in the model" in message
    assert "backbone.0.bias` has shape (8,)" in message  # every problem is listed
    for key, value in wider.state_dict().items():  # nothing was copied
        assert torch.equal(value, before[key])


def test_wrong_names_are_reported_with_close_names(weight_files) -> None:
    folder, _ = weight_files
    model = TinyRegressor(init_seed=2)
    with pytest.raises(
        WeightMatchError, match=r"module `backbon` is not in the pretrained weights. Close names: backbone"
    ):
        load_pretrained(model, folder / "w.pt", {"backbon": "backbone"})
    with pytest.raises(WeightMatchError, match=r"module `haed` is not in the new model.*Close names: head"):
        load_pretrained(model, folder / "w.pt", {"head": "haed"})
    with pytest.raises(
        WeightMatchError,
        match=r"`backbone.0.weight` maps to `backbone.2.0.weight`, which the model does not have",
    ):
        load_pretrained(model, folder / "w.pt", {"backbone": "backbone.2"})


def test_matching_everything_rejects_tensors_the_model_lacks() -> None:
    pretrained = weights(pretrained_model())
    pretrained["extra.weight"] = torch.zeros(2)
    with pytest.raises(WeightMatchError, match=r"pretrained tensor `extra\.weight` maps to `extra\.weight`"):
        match_pretrained_weights(TinyRegressor(), pretrained)


def test_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained_state_dict(tmp_path / "none.pt")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(WeightMatchError, match=r"unsupported file type '.npz'; use one of .ckpt, .pt, .pth"):
        load_pretrained_state_dict(tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightMatchError, match="as safetensors"):
        load_pretrained_state_dict(tmp_path / "bad.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightMatchError, match="does not hold a state dict"):
        load_pretrained_state_dict(tmp_path / "list.pt")
    torch.save({"weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(WeightMatchError, match="entries are not name -> tensor"):
        load_pretrained_state_dict(tmp_path / "mixed.pt")


def test_a_pickled_module_needs_weights_only_false(tmp_path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(WeightMatchError, match="weights_only: false"):
        load_pretrained_state_dict(tmp_path / "module.pt")
    state = load_pretrained_state_dict(tmp_path / "module.pt", weights_only=False)
    assert sorted(state) == ["bias", "weight"]
