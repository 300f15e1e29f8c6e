"""Errors that the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class WisesegError(Exception):
    """A problem the user can fix (bad input, missing file, bad setting).

    The CLI prints ``error: <message>`` and exits with status 2; no traceback.
    """


class DataError(WisesegError):
    """A file of the dataset is missing, unreadable or inconsistent.

    ``str(err)`` is ``"<path>: <problem>"`` so the message always names the file.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep the two-argument constructor across process pools
        return (type(self), (self.path, self.problem))


class ConfigError(WisesegError):
    """A setting has a value that cannot be used."""
