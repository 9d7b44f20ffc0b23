"""Fine-tune a tiny BERT-style text classifier, offline, with gradual unfreezing and layer-wise lr decay.

    python examples/text_classification.py [--epochs 8] [--samples 256]
    python examples/text_classification.py --write_csv examples/data   # the files the YAML config reads

The model is built from a config (random weights: no download); with a model id such as
``backbone="bert-base-uncased"`` the same code loads pretrained weights. The texts are short reviews
that the example makes: their mood words say whether they are positive or negative. The tokenizer is
built from the training texts. ``("gradual_unfreeze", 1)`` trains the classifier head alone in epoch 0,
then unfreezes the encoder one layer per epoch from the top (the pooler, each encoder layer, the
embeddings); ``layer_lr_decay=0.5`` halves the lr of each layer below the one above it. The strategy
finds the encoder (``model.bert``) and the head (``model.classifier``) of the transformers model by
itself.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from lightning.pytorch import seed_everything

from finetune_strategies import Trainer, describe_schedule, resolve_strategy
from finetune_strategies.text import TextClassificationData, TextClassifier

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "vocab_size": 256,
}
"""A 2-layer BERT of about 50k parameters."""

MOODS = {
    "positive": ["good", "great", "lovely", "superb", "fine", "warm", "fresh", "friendly", "tasty", "calm"],
    "negative": ["bad", "awful", "poor", "bland", "rude", "cold", "stale", "noisy", "slow", "dirty"],
}
THINGS = ["the food", "the service", "our table", "the room", "the staff", "the coffee", "the view", "the price"]
LINKS = ["was", "seemed", "felt", "looked", "was really", "was rather"]


def make_reviews(count: int, seed: int) -> tuple[list[str], list[str]]:
    """``count`` reviews, alternately positive and negative: two clauses of the review's mood and, in one
    review of three, a clause of the other mood."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(count):
        label = ("positive", "negative")[index % 2]
        other = ("negative", "positive")[index % 2]
        moods = [label, label] + ([other] if rng.random() < 1 / 3 else [])
        rng.shuffle(moods)
        clauses = [f"{rng.choice(THINGS)} {rng.choice(LINKS)} {rng.choice(MOODS[mood])}" for mood in moods]
        texts.append(", ".join(clauses) + ".")
        labels.append(label)
    return texts, labels


def write_csv(folder: Path) -> None:
    """The reviews as ``reviews_train.csv``, ``reviews_val.csv`` and ``reviews_predict.csv`` (text only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", 64, 0), ("val", 16, 1), ("predict", 6, 2)):
        texts, labels = make_reviews(count, seed)
        with (folder / f"reviews_{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"] if name != "predict" else ["text"])
            writer.writerows(zip(texts, labels, strict=True) if name != "predict" else ([t] for t in texts))
        print(f"wrote {folder / f'reviews_{name}.csv'} ({count} reviews)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=256, help="training reviews")
    parser.add_argument("--write_csv", type=Path, default=None, help="write the CSV files here and stop")
    args = parser.parse_args()
    if args.write_csv is not None:
        write_csv(args.write_csv)
        return

    seed_everything(0, verbose=False)  # the random "pretrained" weights: the same run every time
    train_texts, train_labels = make_reviews(args.samples, seed=0)
    val_texts, val_labels = make_reviews(64, seed=1)
    data = TextClassificationData.from_lists(train_texts, train_labels, val_texts, val_labels, batch_size=16)
    model = TextClassifier(backbone=TINY_BERT, num_labels=data.num_classes, labels=data.labels, lr=1e-2)
    strategy = resolve_strategy(("gradual_unfreeze", 1), layer_lr_decay=0.5, lr=4e-3)

    print(describe_schedule(model, strategy, max_epochs=args.epochs))
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (before,) = trainer.validate(model, data, verbose=False)
    trainer.finetune(model, data, strategy=strategy)
    (after,) = trainer.validate(model, data, verbose=False)
    print(f"val_acc before fine-tuning: {before['val_acc']:.3f}, after: {after['val_acc']:.3f}")
    groups = trainer.optimizers[0].param_groups
    print("param groups:", ", ".join(f"{g.get('name') or 'head'} lr={g['lr']:.2e}" for g in groups))


if __name__ == "__main__":
    main()
