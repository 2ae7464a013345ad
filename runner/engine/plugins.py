"""Plugins: modules a user names in ``CELLSPARSE_PLUGINS`` that register their own strategies,
objectives or executors. Imported before anything is built, in the driver and in every trial process
(a Ray worker on another node included), so a plugin's names exist wherever a trial runs."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

from cellsparse.errors import UserError, describe_error

#: Comma-separated modules imported before anything is built, in the driver and in every trial
#: process: how a strategy (or objective) defined outside this package gets registered everywhere.
PLUGINS_ENV = "CELLSPARSE_PLUGINS"


def plugin_modules() -> tuple[str, ...]:
    raw = os.environ.get(PLUGINS_ENV, "")
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def import_plugins(modules: Sequence[str]) -> None:
    """Import each module (they register strategies or objectives); UserError naming the module for one
    that is not a module name (``..evil``, ``a/b``: only absolute dotted names are imported), cannot be
    found, or fails while it is imported (its own error, first line)."""
    for name in modules:
        if not all(part.isidentifier() for part in name.split(".")):
            raise UserError(f"{PLUGINS_ENV}: {name!r} is not a module name; expected comma-separated absolute "
                            "module names such as mypackage.strategies")
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"{PLUGINS_ENV}: cannot import plugin module {name!r} ({err})") from None
        except Exception as err:  # noqa: BLE001 - a broken plugin is the user's code: one line, not our traceback
            raise UserError(f"{PLUGINS_ENV}: plugin module {name!r} failed while being imported "
                            f"({describe_error(err)})") from None

