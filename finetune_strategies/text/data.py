"""``TextClassificationData``: a LightningDataModule for texts and class labels from lists, CSV or JSON lines.

Sources are read and checked when the data module is built (missing files or fields, empty texts,
mismatched lengths, unknown labels fail there), so the class names are known before any model is
built. The tokenizer is made in ``setup``: loaded by name or folder, or built from the training texts
(see :mod:`finetune_strategies.text.tokenizer`). Texts are tokenized once, truncated to ``max_length``,
and each batch is padded to its longest text (``transformers.DataCollatorWithPadding``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import torch
from torch.utils.data import Dataset, Sampler
from typing_extensions import Unpack, override

from finetune_strategies.errors import TextDataError
from finetune_strategies.tasks.splits import SplitDataModule
from finetune_strategies.tasks.targets import encode_targets, stratified_hold_out
from finetune_strategies.text.extra import require_transformers
from finetune_strategies.text.sources import (
    CSV_SUFFIXES,
    JSON_LINES_SUFFIXES,
    TextSplit,
    check_lengths,
    check_texts,
    read_file,
)
from finetune_strategies.text.tokenizer import build_wordpiece_tokenizer, load_tokenizer
from finetune_strategies.validation import check_positive_int

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STAGES = ("train", "val", "test", "predict")
DEFAULT_VOCAB_SIZE = 1000
"""Vocabulary bound of a tokenizer built from the texts when neither ``vocab_size`` nor the model says one."""


class TextDataSettings(TypedDict, total=False):
    """Keyword settings shared by every ``TextClassificationData`` constructor."""

    tokenizer: str | Path | None
    vocab_size: int | None
    max_length: int
    val_split: float
    batch_size: int
    eval_batch_size: int | None
    num_workers: int
    seed: int


class TokenizedTexts(Dataset[dict[str, Any]]):
    """Tokenized texts (``input_ids``, ``attention_mask``, ...) and, if labelled, ``labels`` per sample."""

    def __init__(self, encodings: dict[str, list[Any]], targets: list[int] | None) -> None:
        self.encodings = encodings
        self.targets = targets

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {key: values[index] for key, values in self.encodings.items()}
        if self.targets is not None:
            sample["labels"] = self.targets[index]
        return sample


class EpochShuffle(Sampler[int]):
    """A new order of ``size`` samples every epoch, drawn from ``seed`` and the epoch (Lightning calls
    :meth:`set_epoch`): the same run makes the same batches, resumed or not, whatever the global RNG does."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class TextClassificationData(SplitDataModule):
    """Texts and class labels for :class:`~finetune_strategies.text.TextClassifier`.

    Build it from CSV or JSON-lines files (``TextClassificationData(train_file=...)``, :meth:`from_csv`,
    :meth:`from_jsonl`) or from Python lists (:meth:`from_lists`). Labels are class names (strings) or
    class indices (ints); :attr:`labels` holds the class names and :attr:`num_classes` their number.

    Args:
        train_file: CSV (header row) or JSON-lines file of the training texts and labels.
        val_file: Same layout, for validation.
        test_file: Same layout, for testing.
        predict_file: Same layout; only the text field is read.
        text_field: The column (CSV) or key (JSON lines) of the texts.
        label_field: The column or key of the labels.
        labels: Class names in class-index order: the order of string labels (else sorted), or the names of
            int labels (else ``"0"``, ``"1"``, ...).
        tokenizer: A model id or a folder for ``AutoTokenizer.from_pretrained`` (for a pretrained backbone,
            its own), or ``None`` to build a WordPiece tokenizer from the training texts (offline use).
        vocab_size: Vocabulary bound of a built tokenizer; ``None``: the size of the model's embeddings,
            else 1000.
        max_length: Texts are truncated to this many tokens.
        val_split: Fraction of the training texts held out for validation (stratified by class), when
            there is no validation source.
        batch_size: Batch size of the training dataloader (and of the others, by default).
        eval_batch_size: Batch size of the validation, test and predict dataloaders.
        num_workers: Dataloader worker processes.
        seed: Seed of the ``val_split`` hold-out and of the training order, which is a new shuffle each epoch
            drawn from ``seed`` and the epoch (:class:`EpochShuffle`), so a resumed run sees the same batches
            as an uninterrupted one.
    """

    data_error = TextDataError
    data_arguments = "{stage}_file or {stage}_texts"

    def __init__(
        self,
        train_file: str | Path | None = None,
        val_file: str | Path | None = None,
        test_file: str | Path | None = None,
        predict_file: str | Path | None = None,
        *,
        text_field: str = "text",
        label_field: str = "label",
        labels: list[str] | None = None,
        tokenizer: str | Path | None = None,
        vocab_size: int | None = None,
        max_length: int = 128,
        val_split: float = 0.0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.set_loading(val_split, batch_size, eval_batch_size, num_workers)
        self.max_length = check_positive_int("max_length", max_length, error=TextDataError)
        self.vocab_size = (
            None if vocab_size is None else check_positive_int("vocab_size", vocab_size, error=TextDataError)
        )
        if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
            raise TextDataError(
                f"`tokenizer` must be a model id, a folder, or None (build one from the training texts), "
                f"got {type(tokenizer).__name__}; to use a tokenizer object, assign it to the data module's "
                "`tokenizer` attribute."
            )
        self.tokenizer_name = tokenizer
        self.tokenizer: PreTrainedTokenizerBase | None = None
        """The tokenizer, once ``setup`` has loaded or built it (or as assigned)."""
        self.seed = seed
        self.labels: list[str] | None = None
        self._sources: dict[str, TextSplit | None] = dict.fromkeys(STAGES)
        self._encoded: dict[str, list[int]] = {}
        self._splits: dict[str, TextSplit | None] | None = None
        files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        for field, name in (("text_field", text_field), ("label_field", label_field)):
            if not isinstance(name, str) or not name:
                raise TextDataError(f"`{field}` must be a column or key name, got {name!r}.")
        splits = {
            stage: read_file(path, f"{stage}_file", text_field, None if stage == "predict" else label_field)
            for stage, path in files.items()
            if path is not None
        }
        self._set_sources(splits, labels, "file")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_lists(
        cls,
        train_texts: Sequence[str] | None = None,
        train_labels: Sequence[Any] | None = None,
        val_texts: Sequence[str] | None = None,
        val_labels: Sequence[Any] | None = None,
        test_texts: Sequence[str] | None = None,
        test_labels: Sequence[Any] | None = None,
        predict_texts: Sequence[str] | None = None,
        labels: list[str] | None = None,
        **settings: Unpack[TextDataSettings],
    ) -> TextClassificationData:
        """Texts as lists of strings, with labels as class names or class indices."""
        data = cls(labels=labels, **settings)
        given = {
            "train": (train_texts, train_labels),
            "val": (val_texts, val_labels),
            "test": (test_texts, test_labels),
            "predict": (predict_texts, None),
        }
        splits = {}
        for stage, (texts, targets) in given.items():
            if texts is None and targets is None:
                continue
            if texts is None:
                raise TextDataError(f"`{stage}_labels` is given without `{stage}_texts`: give both together.")
            checked = check_texts(f"{stage}_texts", texts)
            if stage != "predict":
                if targets is None:
                    raise TextDataError(f"`{stage}_labels` is missing: give {stage}_texts and {stage}_labels together.")
                check_lengths(f"{stage}_texts", checked, f"{stage}_labels", targets)
            splits[stage] = TextSplit(checked, None if targets is None else list(targets))
        data._set_sources(splits, labels, "texts")
        return data

    @classmethod
    def from_csv(
        cls,
        train_file: str | Path | None = None,
        val_file: str | Path | None = None,
        test_file: str | Path | None = None,
        predict_file: str | Path | None = None,
        text_field: str = "text",
        label_field: str = "label",
        labels: list[str] | None = None,
        **settings: Unpack[TextDataSettings],
    ) -> TextClassificationData:
        """CSV files with a header row (``.csv``, or ``.tsv`` for tab-separated values)."""
        files = (train_file, val_file, test_file, predict_file)
        _check_suffixes(files, CSV_SUFFIXES, "from_csv", "from_jsonl")
        return cls(*files, text_field=text_field, label_field=label_field, labels=labels, **settings)

    @classmethod
    def from_jsonl(
        cls,
        train_file: str | Path | None = None,
        val_file: str | Path | None = None,
        test_file: str | Path | None = None,
        predict_file: str | Path | None = None,
        text_field: str = "text",
        label_field: str = "label",
        labels: list[str] | None = None,
        **settings: Unpack[TextDataSettings],
    ) -> TextClassificationData:
        """JSON-lines files (``.jsonl``, ``.ndjson``): one object per line, such as
        ``{"text": "...", "label": "positive"}``."""
        files = (train_file, val_file, test_file, predict_file)
        _check_suffixes(files, JSON_LINES_SUFFIXES, "from_jsonl", "from_csv")
        return cls(*files, text_field=text_field, label_field=label_field, labels=labels, **settings)

    # ------------------------------------------------------------------ sources
    def _set_sources(self, splits: dict[str, TextSplit], labels: list[str] | None, kind: str) -> None:
        if "train" not in splits and ("val" in splits or "test" in splits):
            raise TextDataError(f"val_{kind} / test_{kind} need train_{kind}, whose labels define the classes.")
        if self.val_split and "val" in splits:
            raise TextDataError("Give validation data or val_split, not both.")
        labelled = {f"{stage}_labels": split.targets for stage, split in splits.items() if split.targets is not None}
        if labelled:
            encoded, self.labels = encode_targets(labelled, labels, error=TextDataError)
            for stage, split in splits.items():
                if split.targets is not None:
                    split.targets = encoded[f"{stage}_labels"]
        elif labels is not None:
            self.labels = [str(label) for label in labels]
        if self.labels is not None and len(self.labels) < 2:
            raise TextDataError(f"Classification needs at least 2 classes, got {self.labels}.")
        self._sources.update(splits)

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None when the data module holds only predict texts."""
        return None if self.labels is None else len(self.labels)

    @property
    def predict_ids(self) -> list[str]:
        """The index of each predict text, in dataloader order."""
        split = self._checked_splits()["predict"]
        return [] if split is None else [str(i) for i in range(len(split))]

    @override
    def _checked_splits(self) -> dict[str, TextSplit | None]:
        if self._splits is None:
            splits = dict(self._sources)
            train = splits["train"]
            if self.val_split and train is not None:
                assert train.targets is not None
                kept, held = stratified_hold_out(
                    train.targets, self.val_split, self.seed, error=TextDataError, what="texts"
                )
                splits["train"], splits["val"] = train.subset(kept), train.subset(held)
            self._splits = splits
        return self._splits

    def _model_vocab_size(self) -> int | None:
        """The size of the embeddings of the model being trained, if it is a transformers model."""
        model = getattr(self.trainer.lightning_module, "model", None) if self.trainer is not None else None
        embeddings = getattr(model, "get_input_embeddings", None)
        return int(embeddings().num_embeddings) if callable(embeddings) else None

    def make_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer: loaded from ``tokenizer`` if it names one, else built from the training texts."""
        if self.tokenizer_name is not None:
            return load_tokenizer(self.tokenizer_name)
        train = self._checked_splits()["train"]
        if train is None:
            raise TextDataError(
                "There are no training texts to build a tokenizer from: give tokenizer= (a model id, or the folder "
                "TextClassifier.save_pretrained wrote)."
            )
        vocab_size = self.vocab_size or self._model_vocab_size() or DEFAULT_VOCAB_SIZE
        return build_wordpiece_tokenizer(train.texts, vocab_size, self.max_length)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.make_tokenizer()
        self._datasets = {
            name: TokenizedTexts(self.tokenize(split.texts), split.targets)
            for name, split in self._checked_splits().items()
            if split is not None
        }

    def tokenize(self, texts: list[str]) -> dict[str, list[Any]]:
        """``texts`` through the tokenizer, truncated to ``max_length``, unpadded (batches are padded later)."""
        assert self.tokenizer is not None
        return dict(self.tokenizer(texts, truncation=True, max_length=self.max_length))

    # ------------------------------------------------------------------ loaders
    @override
    def loader_options(self, stage: str, shuffle: bool) -> dict[str, Any]:
        """The seeded epoch order for training (the same batches after a resume), and dynamic padding."""
        transformers = require_transformers("TextClassificationData")
        size = len(cast(TokenizedTexts, self._datasets[stage]))
        sampler = EpochShuffle(size, self.seed) if shuffle else None
        return {"sampler": sampler, "collate_fn": transformers.DataCollatorWithPadding(self.tokenizer)}


def _check_suffixes(files: Sequence[str | Path | None], suffixes: tuple[str, ...], method: str, other: str) -> None:
    for path in files:
        if path is not None and Path(path).suffix.lower() not in suffixes:
            raise TextDataError(
                f"{method} reads {', '.join(suffixes)} files; {str(path)!r} is not one. Use {other} or the "
                "constructor, which go by the file's suffix."
            )
