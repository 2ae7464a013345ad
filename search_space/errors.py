"""The project's error types (see ``cellsparse.errors``): ``UserError`` and the space's and the
data's own kinds of it."""

from cellsparse.errors import UserError  # re-exported: the documented import path


class SpecError(UserError):
    """A search-space file is malformed."""


class DataError(UserError):
    """A dataset file or folder cannot be used."""


__all__ = ["DataError", "SpecError", "UserError"]
