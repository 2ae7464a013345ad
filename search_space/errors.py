"""The project's error types. A ``UserError`` is a mistake in the user's input (a space file, a data
path, a flag): command-line entry points print its message on one line and exit non-zero, with no
traceback. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem with what the user gave us; the message names the file/key/argument and the fix."""


class SpecError(UserError):
    """A search-space file is malformed."""


class DataError(UserError):
    """A dataset file or folder cannot be used."""
