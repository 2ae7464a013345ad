"""The ``cellsparse`` logger: what the Python API says while it works.

The commands print their lines to stdout; called from Python, the same lines (a search's header and
progress, its front, export's steps) go to this logger at INFO. Like Optuna's, it comes with its own
handler, which writes each message as a plain line to the current ``sys.stderr``, so a notebook or a
script shows them without any set-up; to quiet them, or to route them elsewhere::

    import logging
    from cellsparse.log import set_verbosity, disable_default_handler

    set_verbosity(logging.WARNING)        # only warnings and errors
    disable_default_handler()             # and let the application's logging config handle the rest

Messages reach the root logger as well once the default handler is off (``propagate`` is turned on
then), so ``logging.basicConfig`` sees them.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "cellsparse"


class _StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is when the record is emitted (not when the handler was made), so
    redirections (pytest's capture, ``contextlib.redirect_stderr``) apply."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)


logger = logging.getLogger(LOGGER_NAME)
_default_handler = _StderrHandler()
_default_handler.setFormatter(logging.Formatter("%(message)s"))
logger.addHandler(_default_handler)
logger.setLevel(logging.INFO)
logger.propagate = False


def set_verbosity(level: int) -> None:
    """Show messages of ``level`` and above (``logging.INFO`` by default, ``logging.WARNING`` to quiet)."""
    logger.setLevel(level)


def get_verbosity() -> int:
    return logger.getEffectiveLevel()


def disable_default_handler() -> None:
    """Remove the stderr handler and pass messages on to the root logger (the application's config)."""
    logger.removeHandler(_default_handler)
    logger.propagate = True


def enable_default_handler() -> None:
    """Put the stderr handler back (and stop passing messages on to the root logger)."""
    if _default_handler not in logger.handlers:
        logger.addHandler(_default_handler)
    logger.propagate = False
