"""``python -m runner.export``."""

import sys

from runner.export.cli import main

sys.exit(main())
