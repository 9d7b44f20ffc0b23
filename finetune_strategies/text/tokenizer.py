"""Tokenizers for :class:`~finetune_strategies.text.TextClassificationData`: one by name or folder, or a small
WordPiece tokenizer built from the training texts for offline use.

A built tokenizer is BERT-style: lower-cased, accents stripped, split on whitespace and punctuation,
``[CLS] text [SEP]`` with ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]``, ``[SEP]`` and ``[MASK]``. It is a
``transformers.PreTrainedTokenizerFast``, so ``save_pretrained`` writes it and ``AutoTokenizer`` loads it.
Training on the same texts gives the same vocabulary, so every process of a distributed run, and a
resumed run, builds the same tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_strategies.errors import PretrainedWeightsError, TextDataError
from finetune_strategies.text.extra import require_tokenizers, require_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
MASK_TOKEN = "[MASK]"
MIN_VOCAB_SIZE = 16
"""The smallest vocabulary a built tokenizer may have: the special tokens and some characters."""


def build_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer of at most ``vocab_size`` tokens trained on ``texts`` (see the module's doc)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TextDataError(f"`vocab_size` must be at least {MIN_VOCAB_SIZE} for a built tokenizer, got {vocab_size}.")
    tokenizers = require_tokenizers("Building a tokenizer from the training texts")
    transformers = require_transformers("Building a tokenizer from the training texts")
    specials = [*SPECIAL_TOKENS.values(), MASK_TOKEN]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    trainer = tokenizers.trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    tokenizer.decoder = tokenizers.decoders.WordPiece()
    wrapped: PreTrainedTokenizerBase = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, mask_token=MASK_TOKEN, **SPECIAL_TOKENS
    )
    return wrapped


def load_tokenizer(name: str | Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name)``: a model id of the Hugging Face hub or a local folder."""
    transformers = require_transformers("Loading a tokenizer")
    try:
        tokenizer: PreTrainedTokenizerBase = transformers.AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError) as error:
        raise PretrainedWeightsError(
            f"Cannot load the tokenizer {str(name)!r} ({error}). Give a model id the Hugging Face hub has (online), "
            "a folder written by save_pretrained, or tokenizer=None to build one from the training texts (offline)."
        ) from None
    return tokenizer
