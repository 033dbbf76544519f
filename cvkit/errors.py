"""Errors a user can fix. Each carries the exit code the command line returns for it.

The command line prints a ``CvkitError`` as one line on stderr and exits with its code; any other
exception is a bug in cvkit or a plugin and keeps its traceback.
"""


class CvkitError(Exception):
    """A user-facing error: the message names the file, option, key or plugin at fault."""

    exit_code = 1


class UsageError(CvkitError):
    """A bad option, name or config value."""

    exit_code = 2


class DataError(CvkitError):
    """Unreadable or inconsistent input data (images, folders)."""

    exit_code = 3


class CheckpointError(CvkitError):
    """A weights or checkpoint file that cannot be used."""

    exit_code = 4


class PluginError(CvkitError):
    """A plugin that failed to load, to register, or inside one of its factories."""

    exit_code = 5


class NumericalError(CvkitError):
    """A loss or weight that is not finite."""

    exit_code = 6


def message_of(exc: CvkitError) -> str:
    """The one-line message of a cvkit error.

    torch's DataLoader re-raises an exception from a worker process as the same class with the
    worker's whole traceback as its message; the user's message is its last line.
    """
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        _, sep, rest = last.partition(": ")
        return rest if sep else last
    return text
