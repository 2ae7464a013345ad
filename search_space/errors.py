"""The space's and the data's own kinds of ``cellsparse.errors.UserError`` (import that from
``cellsparse.errors``, or ``cellsparse.UserError``)."""

from cellsparse.errors import UserError


class SpecError(UserError):
    """A search-space file is malformed."""


class DataError(UserError):
    """A dataset file or folder cannot be used."""


__all__ = ["DataError", "SpecError"]
