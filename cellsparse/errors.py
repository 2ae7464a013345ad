"""The project's base error. A ``UserError`` is a mistake in the user's input (a space file, a data
path, a flag, a run directory): command-line entry points print its message on one line and exit
non-zero, with no traceback. Anything else is a bug and keeps its traceback.

It lives in the base so every layer raises and catches the same class: import it from here (or as
``cellsparse.UserError``); ``search_space.errors`` adds the space's and the data's own kinds."""


class UserError(Exception):
    """A problem with what the user gave us; the message names the file/key/argument and the fix."""


def describe_error(err: BaseException) -> str:
    """One line for a message or trials.csv: the exception type and its first message line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
