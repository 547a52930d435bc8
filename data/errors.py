"""Errors for bad input: every message names the file and says what is wrong."""
from __future__ import annotations

import os


class BadInputError(ValueError):
    """An input file that cannot be used (corrupt, empty, unsupported, too large ...)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Rebuild from (path, reason) so the error crosses process boundaries; the state keeps notes added
        # on the way (e.g. which flow worker raised it).
        return (type(self), (self.path, self.reason), self.__dict__)
