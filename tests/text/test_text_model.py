"""TextClassifier: LoRA and its export, trainable-only checkpoints, resume, predictions, building and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from text_helpers import TINY_BERT, make_classifier, make_data, make_texts, strategy
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from finetune_strategies.errors import FrozenWeightsError, ModelConfigError, PretrainedWeightsError
from finetune_strategies.text import TextClassifier


def batch_of(data, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(data.tokenizer(texts, padding=True, return_tensors="pt"))


def test_lora_trains_adapters_and_the_classifier_and_exports_a_loadable_folder(tmp_path: Path) -> None:
    model, data = make_classifier(), make_data()
    initial = {k: v.clone() for k, v in model.model.state_dict().items()}
    spec = strategy("lora", r=2, target_modules=["query", "value"])
    make_trainer(2).finetune(model, data, strategy=spec)

    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in model.parameters())
    assert sum(trainable.values()) < 0.05 * total
    assert {n for n in trainable if "lora_" not in n} == {"model.classifier.weight", "model.classifier.bias"}
    assert sum("lora_" in n for n in trainable) == 2 * 2 * 2  # A and B, query and value, 2 layers
    assert not torch.equal(model.model.classifier.weight, initial["classifier.weight"])
    base = {k: v for k, v in model.model.state_dict().items() if "lora_" not in k and "base_layer" not in k}
    assert all(torch.equal(v, initial[k]) for k, v in base.items() if k.startswith("bert."))

    folder = model.save_pretrained(tmp_path / "export")
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    texts, _ = make_texts(6, seed=3)
    inputs = batch_of(data, texts)
    assert torch.equal(dict(tokenizer(texts, padding=True, return_tensors="pt"))["input_ids"], inputs["input_ids"])
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-5)
    assert model.model.bert.encoder.layer[0].attention.self.query.lora_A  # the classifier keeps its adapters


def test_a_trainable_only_checkpoint_loads_into_a_model_with_the_same_frozen_weights(tmp_path: Path) -> None:
    model, data = make_classifier(), make_data()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="frozen")
    trainer = make_trainer(1, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.finetune(model, data, strategy=strategy("freeze", save_trainable_only=True))
    saved = torch.load(tmp_path / "frozen.ckpt", weights_only=False)
    assert sorted(saved["state_dict"]) == ["model.classifier.bias", "model.classifier.weight"]

    torch.manual_seed(0)  # the same random "pretrained" weights as make_classifier's
    loaded = TextClassifier.load_from_checkpoint(tmp_path / "frozen.ckpt")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.labels == ["negative", "positive"]

    torch.manual_seed(1)  # other frozen weights: refused, naming the fingerprints
    with pytest.raises(FrozenWeightsError, match="fingerprint"):
        TextClassifier.load_from_checkpoint(tmp_path / "frozen.ckpt")


def test_resume_after_the_unfreeze_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path) -> None:
    spec = strategy("gradual_unfreeze", start_epoch=1, layer_lr_decay=0.5)
    first = make_trainer(2, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    first.finetune(make_classifier(), make_data(), strategy=spec)
    resumed_model = make_classifier()
    resumed = make_trainer(5)
    resumed.finetune(resumed_model, make_data(), strategy=spec, ckpt_path=str(tmp_path / "last.ckpt"))
    full_model = make_classifier()
    full = make_trainer(5)
    full.finetune(full_model, make_data(), strategy=spec)
    for name, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name
    assert [g["lr"] for g in resumed.optimizers[0].param_groups] == [g["lr"] for g in full.optimizers[0].param_groups]
    assert len(full.optimizers[0].param_groups) == 5  # the head, then 4 layers one by one


def test_predict_returns_label_names_and_probabilities() -> None:
    model = make_classifier()
    texts, _ = make_texts(5, seed=4)
    data = make_data()
    data_with_predict = type(data).from_lists(*make_texts(32), predict_texts=texts, batch_size=2)
    trainer = make_trainer(1)
    trainer.finetune(model, data_with_predict, strategy=strategy("freeze_unfreeze", unfreeze_epoch=0))
    batches = trainer.predict(model, datamodule=data_with_predict)
    assert [len(b["labels"]) for b in batches] == [2, 2, 1]
    probabilities = torch.cat([b["probabilities"] for b in batches])
    assert probabilities.shape == (5, 2)
    assert torch.allclose(probabilities.sum(-1), torch.ones(5))
    names = [name for b in batches for name in b["labels"]]
    assert names == [["negative", "positive"][i] for i in probabilities.argmax(-1).tolist()]
    model.eval()
    with torch.no_grad():
        direct = torch.softmax(model(batch_of(data_with_predict, texts[:2])), -1)
    assert torch.allclose(direct, probabilities[:2], atol=1e-6)


def test_backbone_from_a_config_object_a_dict_or_a_saved_folder(tmp_path: Path) -> None:
    settings = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    from_object = TextClassifier(backbone=BertConfig(**settings), num_labels=3)
    assert from_object.hparams["backbone"]["hidden_size"] == 16  # kept as a dict: the checkpoint rebuilds it
    assert from_object.model.config.num_labels == 3
    assert from_object.model.config.id2label == {0: "0", 1: "1", 2: "2"}
    from_object.save_pretrained(tmp_path / "folder")
    from_folder = TextClassifier(backbone=tmp_path / "folder", num_labels=3)  # from_pretrained, offline
    for name, value in from_object.model.state_dict().items():
        assert torch.equal(from_folder.model.state_dict()[name], value), name


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_labels": 2}, ModelConfigError, "needs a backbone"),
        ({"backbone": dict(TINY_BERT)}, ModelConfigError, "needs num_labels"),
        ({"backbone": dict(TINY_BERT), "num_labels": 1}, ModelConfigError, "num_labels"),
        ({"backbone": dict(TINY_BERT), "num_labels": 2, "labels": ["a"]}, ModelConfigError, "one per class"),
        ({"backbone": {"hidden_size": 16}, "num_labels": 2}, ModelConfigError, "model_type"),
        ({"backbone": {"model_type": "berd"}, "num_labels": 2}, ModelConfigError, "Did you mean 'bert'"),
        ({"backbone": dict(TINY_BERT), "num_labels": 2, "optimizer": "adamm"}, ModelConfigError, "adam"),
        ({"backbone": 3, "num_labels": 2}, ModelConfigError, "model id or folder"),
    ],
)
def test_bad_settings_are_refused(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        TextClassifier(**kwargs)


def test_a_missing_model_folder_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="offline, a config"):
        TextClassifier(backbone=tmp_path / "missing", num_labels=2)


def test_a_tokenizer_larger_than_the_embeddings_is_refused_at_setup() -> None:
    model = TextClassifier(backbone={**TINY_BERT, "vocab_size": 40}, num_labels=2)
    data = make_data(vocab_size=128)
    with pytest.raises(ModelConfigError, match=r"tokenizer has 78 tokens but the model's embeddings hold 40"):
        make_trainer(1).finetune(model, data, strategy=strategy("freeze"))


def test_compile_compiles_in_place_and_keeps_the_eager_keys() -> None:
    eager = TextClassifier(TINY_BERT, num_labels=2)
    compiled = TextClassifier(TINY_BERT, num_labels=2, compile=True, compile_kwargs={"backend": "eager"})
    assert compiled.compile_kwargs == {"backend": "eager"}
    assert list(compiled.state_dict()) == list(eager.state_dict())
    with pytest.raises(ModelConfigError, match="`compile_kwargs`"):
        TextClassifier(TINY_BERT, num_labels=2, compile_kwargs={"backend": "eager"})
