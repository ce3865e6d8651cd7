"""Errors raised by the readers and writers.

Both name the file and the problem, ``"{path}: {problem}"``, so that a message shown in the GUI
or the CLI is enough to act on. Both are :class:`ValueError` subclasses: a bad file is a bad
value handed to the program, and callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import os


class _FileError(ValueError):
    """A problem with one file: ``str(error) == f"{path}: {problem}"``.

    Parameters
    ----------
    path
        The file (or folder) concerned.
    problem
        What is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Keep the two-argument constructor working through pickle (worker processes).
        return (type(self), (self.path, self.problem))


class ReadError(_FileError):
    """A file could not be read: missing, unsupported, corrupt, truncated or out of range."""


class WriteError(_FileError):
    """A file could not be written: unsupported extension, bad data or settings, or I/O."""
