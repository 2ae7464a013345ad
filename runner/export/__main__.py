"""``python -m runner.export``."""

import sys

from cellsparse.commands import run_command
from runner.export.cli import main

sys.exit(run_command(main))
