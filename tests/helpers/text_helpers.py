"""A tiny BERT from a config, a small two-class text set and quiet trainers for the text-task tests."""

from __future__ import annotations

import random
from typing import Any

import torch

from finetune_strategies.text import TextClassificationData, TextClassifier

torch.set_num_threads(1)  # tiny models: one thread is fastest and avoids contention

TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 128,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
"""A 2-layer BERT of about 12k parameters, without dropout (so that runs are exactly repeatable)."""
ENCODER_LAYERS = ["model.bert.encoder.layer.0", "model.bert.encoder.layer.1"]

POSITIVE = ["good", "great", "fine", "lovely", "happy", "bright", "warm", "kind"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dull", "cold", "grim", "rude"]
FILLER = ["the", "movie", "food", "day", "was", "very", "quite", "and", "a", "it", "service", "story"]


def make_texts(n: int = 32, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` short texts, half ``positive`` and half ``negative``, told apart by their mood words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(n):
        label = "positive" if index % 2 == 0 else "negative"
        moods = POSITIVE if label == "positive" else NEGATIVE
        words = rng.sample(FILLER, 4) + rng.sample(moods, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def make_data(n: int = 32, batch_size: int = 8, **settings: Any) -> TextClassificationData:
    """Training texts (``n``) and 8 validation texts from :func:`make_texts`."""
    train_texts, train_labels = make_texts(n)
    val_texts, val_labels = make_texts(8, seed=1)
    return TextClassificationData.from_lists(
        train_texts, train_labels, val_texts, val_labels, batch_size=batch_size, **settings
    )


def make_classifier(**kwargs: Any) -> TextClassifier:
    """A :data:`TINY_BERT` classifier for the two classes of :func:`make_texts`, with the same weights every
    time (seeded)."""
    torch.manual_seed(0)
    settings: dict[str, Any] = {"num_labels": 2, "labels": ["negative", "positive"], "lr": 1e-2, **kwargs}
    return TextClassifier(backbone=dict(TINY_BERT), **settings)


def strategy(name: str, **options: Any) -> dict[str, Any]:
    """The spec of strategy ``name`` with ``options``; nothing names what to freeze: the strategies find the
    encoder (``model.bert``) and the head (``model.classifier``) of the transformers model by themselves."""
    return {"strategy": name, **options}
