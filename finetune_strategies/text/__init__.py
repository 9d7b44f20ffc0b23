"""Text classification with Hugging Face ``transformers`` models, and its data module.

Needs the ``text`` extra (``pip install "finetune-strategies[text]"``: transformers and tokenizers); the
modules import without it, and building a classifier or a tokenizer without it raises
:class:`~finetune_strategies.errors.MissingDependencyError` naming that line.
"""

from finetune_strategies.text.data import TextClassificationData
from finetune_strategies.text.model import TextClassifier
from finetune_strategies.text.tokenizer import build_wordpiece_tokenizer

__all__ = ["TextClassificationData", "TextClassifier", "build_wordpiece_tokenizer"]
