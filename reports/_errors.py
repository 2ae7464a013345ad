"""The project's UserError, imported when first raised or caught.

``search_space/__init__`` imports torch (seconds on a small machine), so importing
``search_space.errors`` at module level would make every report build pay for torch and break the
rule that reports import no torch. The class is the same one the rest of the project raises.
"""

from __future__ import annotations


def user_error_type() -> type[Exception]:
    """``search_space.errors.UserError`` (importing it on first use)."""
    from search_space.errors import UserError

    return UserError


def user_error(message: str) -> Exception:
    """A UserError to raise: ``raise user_error("...")``."""
    return user_error_type()(message)
