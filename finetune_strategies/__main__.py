"""``python -m finetune_strategies`` runs the ``finetune-strategies`` command."""

import sys

from finetune_strategies.cli.app import main

sys.exit(main())
