"""``python -m finetune_strategies.transfer --config tl.yaml``."""

from finetune_strategies.transfer.cli import main

main()
