"""``python -m finetune_strategies.transfer --config tl.yaml``."""

from finetune_strategies.cli.transfer import main

main()
