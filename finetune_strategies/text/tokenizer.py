"""Tokenizers for :class:`~finetune_strategies.text.TextClassificationData`: one by name or folder, or a small
WordPiece tokenizer built from the training texts for offline use.

A built tokenizer is BERT-style: lower-cased, accents stripped, split on whitespace and punctuation,
``[CLS] text [SEP]`` with ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]``, ``[SEP]`` and ``[MASK]``. Its WordPiece
vocabulary holds every character of the texts and their most frequent words
(:func:`wordpiece_vocabulary`), so the same texts give the same token ids: every process of a distributed
run, and a resumed run, builds the same tokenizer. It is a ``transformers.PreTrainedTokenizerFast``, so
``save_pretrained`` writes it and ``AutoTokenizer`` loads it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_strategies.errors import PretrainedWeightsError, TextDataError
from finetune_strategies.text.extra import require_tokenizers, require_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
MASK_TOKEN = "[MASK]"


def wordpiece_vocabulary(words: Counter[str], vocab_size: int) -> list[str]:
    """The tokens of a built tokenizer: the special tokens, every character of ``words`` (alone and as a
    ``##`` continuation, so that any word of these characters can be spelled), then the most frequent whole
    words (ties in alphabetical order) up to ``vocab_size``. The same words give the same list."""
    characters = sorted({character for word in words for character in word})
    alphabet = characters + [f"##{character}" for character in characters]
    fixed = [*SPECIAL_TOKENS.values(), MASK_TOKEN, *alphabet]
    if vocab_size < len(fixed):
        raise TextDataError(
            f"`vocab_size` {vocab_size} cannot hold the {len(characters)} characters of the training texts, which "
            f"a built tokenizer needs twice, plus its 5 special tokens: give vocab_size >= {len(fixed)}."
        )
    by_count = sorted((word for word in words if len(word) > 1), key=lambda word: (-words[word], word))
    return fixed + by_count[: vocab_size - len(fixed)]


def build_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer of at most ``vocab_size`` tokens made from ``texts`` (see the module's doc).

    The vocabulary is counted, not trained: ``tokenizers``' WordPiece trainer numbers tokens of equal
    frequency in a different order on every run, and every process must build the same tokenizer.
    """
    tokenizers = require_tokenizers("Building a tokenizer from the training texts")
    transformers = require_transformers("Building a tokenizer from the training texts")
    normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    vocabulary = wordpiece_vocabulary(words, vocab_size)
    ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab=ids, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
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
