"""``TextClassifier``: a Hugging Face ``transformers`` sequence classifier as a LightningModule.

The model is ``self.model``, an ``AutoModelForSequenceClassification`` (e.g. ``BertForSequenceClassification``:
the encoder ``model.bert`` and the head ``model.classifier``). The classifier has no ``backbone``
attribute: the strategies find the encoder by themselves, or take it from ``attr_names="model.bert"``.
The optimizer is built over the parameters that require grad when training starts, so a strategy can add
the encoder as new param groups when it unfreezes it.

``transformers`` is an optional extra: ``pip install "finetune-strategies[text]"``. This module imports
without it; building a classifier needs it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.core.compiled import compile_option
from finetune_strategies.errors import ModelConfigError, PretrainedWeightsError
from finetune_strategies.model.adapters import merge_adapters, tuner_modules
from finetune_strategies.tasks.classifier import ClassifierModule
from finetune_strategies.text.extra import require_transformers
from finetune_strategies.validation import did_you_mean

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


def _config_from_mapping(values: Mapping[str, Any]) -> PretrainedConfig:
    """A ``transformers`` config from a mapping with its ``model_type`` (``{"model_type": "bert", ...}``)."""
    transformers = require_transformers("TextClassifier")
    settings = dict(values)
    model_type = settings.get("model_type")
    known = sorted(transformers.CONFIG_MAPPING.keys())
    if model_type not in known:
        hint = did_you_mean(str(model_type), known) if isinstance(model_type, str) else ""
        raise ModelConfigError(
            f"A backbone config needs a `model_type` that transformers knows (such as 'bert', 'distilbert', "
            f"'roberta'), got {model_type!r}.{hint}"
        )
    try:
        config: PretrainedConfig = transformers.AutoConfig.for_model(**settings)
    except (TypeError, ValueError) as error:
        raise ModelConfigError(f"The backbone config {settings!r} is not a {model_type} config: {error}") from None
    return config


def build_sequence_classifier(
    backbone: str | Path | Mapping[str, Any] | PretrainedConfig,
    num_labels: int,
    labels: list[str] | None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` with ``num_labels`` outputs: ``from_pretrained`` for a model id
    or folder, ``from_config`` (random weights) for a config or a mapping with its ``model_type``."""
    transformers = require_transformers("TextClassifier")
    auto = transformers.AutoModelForSequenceClassification
    names = labels if labels is not None else [str(i) for i in range(num_labels)]
    label_settings: dict[str, Any] = {
        "num_labels": num_labels,
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }
    extra = dict(backbone_kwargs or {})
    if isinstance(backbone, (str, Path)):
        try:
            model: PreTrainedModel = auto.from_pretrained(str(backbone), **label_settings, **extra)
        except OSError as error:
            raise PretrainedWeightsError(
                f"Cannot load the transformers model {str(backbone)!r} ({error}). Give a model id the Hugging Face "
                "hub has (online), a local folder written by save_pretrained, or, offline, a config: "
                "backbone={'model_type': 'bert', 'hidden_size': 32, ...} or a transformers.PretrainedConfig."
            ) from None
        return model
    if isinstance(backbone, transformers.PretrainedConfig):
        config = copy.deepcopy(backbone)
    elif isinstance(backbone, Mapping):
        config = _config_from_mapping(backbone)
    else:
        raise ModelConfigError(
            "`backbone` must be a transformers model id or folder, a transformers.PretrainedConfig, or a dict "
            f"with its 'model_type', got {type(backbone).__name__}."
        )
    for key, value in label_settings.items():
        setattr(config, key, value)
    built: PreTrainedModel = auto.from_config(config, **extra)
    return built


class TextClassifier(ClassifierModule):
    """Classify texts with a ``transformers`` model (``self.model``) and its sequence-classification head.

    Args:
        backbone: A model id of the Hugging Face hub (``"bert-base-uncased"``) or a folder written by
            ``save_pretrained``, loaded with ``from_pretrained``; or, for offline use, a
            ``transformers.PretrainedConfig`` or a dict with its ``model_type``
            (``{"model_type": "bert", "hidden_size": 32, ...}``), built with ``from_config`` (random weights).
            Required; it is optional in the signature only so that the CLI can take it from a checkpoint.
        num_labels: Number of classes (>= 2). Required; it is optional in the signature only so that the CLI
            can take it from the data or from a checkpoint.
        labels: Class names, in class-index order: the model config's ``id2label``, and the names
            :meth:`predict_step` and prediction files give.
        optimizer: A ``torch.optim`` class name, case-insensitive (``"adamw"``, ``"adam"``, ``"sgd"``), or a
            dotted class path (see :mod:`finetune_strategies.core.optim`).
        lr: Learning rate of the optimizer's first param group.
        weight_decay: Weight decay.
        optimizer_kwargs: Extra optimizer arguments, e.g. ``{"betas": [0.9, 0.98]}``.
        scheduler: ``None``, an alias (``"cosine"``, ``"step"``, ``"exponential"``, ``"linear"``,
            ``"plateau"``, ``"onecycle"``) or a ``torch.optim.lr_scheduler`` class name.
        scheduler_kwargs: Scheduler arguments, plus ``interval`` / ``monitor`` for Lightning.
        backbone_kwargs: Extra arguments for ``from_pretrained`` / ``from_config`` (``revision``,
            ``ignore_mismatched_sizes``, ...).
        compile: Compile the classifier in place with ``torch.compile``, as ``ImageClassifier`` does (see the
            compiled-models page). With dynamic padding, batches of new lengths recompile until dynamo marks the
            length dynamic.
        compile_kwargs: ``torch.compile`` arguments with ``compile``; ``None``: torch's defaults (inductor).
    """

    def __init__(
        self,
        backbone: dict[str, Any] | str | Path | PretrainedConfig | None = None,  # dict first: dumped as a dict
        num_labels: int | None = None,
        labels: list[str] | None = None,
        optimizer: str = "adamw",
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: str | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        compile: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        transformers = require_transformers("TextClassifier")
        if backbone is None:
            raise ModelConfigError(
                "TextClassifier needs a backbone: a transformers model id or folder, or a config such as "
                "{'model_type': 'bert', 'hidden_size': 32, ...}."
            )
        self.save_hyperparameters(ignore=["backbone"])
        # a config is kept as its dict, so that load_from_checkpoint rebuilds the same architecture
        if isinstance(backbone, transformers.PretrainedConfig):
            self.hparams["backbone"] = backbone.to_dict()
        else:
            self.hparams["backbone"] = str(backbone) if isinstance(backbone, Path) else backbone
        self.set_classes(num_labels, labels, "num_labels")
        self.set_optimization(optimizer, lr, weight_decay, optimizer_kwargs, scheduler, scheduler_kwargs)
        self.model = build_sequence_classifier(backbone, self.num_classes, self.labels, backbone_kwargs)
        self.compile_kwargs = compile_option(self, compile, compile_kwargs)
        """The ``torch.compile`` arguments the classifier was compiled with; ``None``: not compiled."""
        self.tokenizer: PreTrainedTokenizerBase | None = None
        """The tokenizer :meth:`save_pretrained` writes beside the model: set by hand, or taken from the data
        module when a fit, validation, test or prediction starts."""

    @property
    def num_labels(self) -> int:
        """Number of classes (the model config's ``num_labels``)."""
        return self.num_classes

    # ------------------------------------------------------------------ model
    @override
    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The logits for tokenized ``inputs`` (``input_ids``, ``attention_mask``, ...; ``labels`` is ignored)."""
        features = {key: value for key, value in inputs.items() if key != "labels"}
        logits: torch.Tensor = self.model(**features).logits
        return logits

    @override
    def setup(self, stage: str) -> None:
        """Take the data module's tokenizer (if the classifier has none) and check that the model's
        embeddings hold its vocabulary."""
        trainer = _lightning.attached_trainer(self)
        datamodule = getattr(trainer, "datamodule", None)
        if self.tokenizer is None:
            self.tokenizer = getattr(datamodule, "tokenizer", None)
        embeddings = self.model.get_input_embeddings()
        known = embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else None
        if self.tokenizer is not None and known is not None and len(self.tokenizer) > known:
            raise ModelConfigError(
                f"The tokenizer has {len(self.tokenizer)} tokens but the model's embeddings hold {known}. Use the "
                "backbone's own tokenizer, build the model with vocab_size >= the tokenizer's, or build the "
                "tokenizer with a smaller vocab_size."
            )

    def plain_model(self) -> PreTrainedModel:
        """The model in its plain architecture: with adapters (``lora``), a copy with them merged in (the
        classifier keeps its adapters); else the model itself."""
        return merge_adapters(copy.deepcopy(self.model)) if tuner_modules(self.model) else self.model

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a folder that ``AutoModelForSequenceClassification.from_pretrained(path)`` loads: the model
        with its adapters merged in (:meth:`plain_model`), and the tokenizer beside it when the classifier
        has one (so ``AutoTokenizer.from_pretrained(path)`` loads it too). Call it on one process only."""
        folder = Path(path)
        self.plain_model().save_pretrained(folder)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        return folder

    # ------------------------------------------------------------------ steps
    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.classification_step(self(batch), batch["labels"], "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.classification_step(self(batch), batch["labels"], "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.classification_step(self(batch), batch["labels"], "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """``{"labels": [predicted class name, ...], "probabilities": (batch, num_labels) tensor}``."""
        probabilities = torch.softmax(self(batch), dim=-1)
        names = self.label_names()
        return {"labels": [names[i] for i in probabilities.argmax(-1).tolist()], "probabilities": probabilities}
