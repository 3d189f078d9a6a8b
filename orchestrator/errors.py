"""Errors a user can act on: one line that names the thing and the fix, and an exit code."""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


class RodinError(Exception):
    exit_code = 1
    #: Keys the `--json` error object carries beside "error" (an error sets its own, e.g. the
    #: reason for each file it skipped): a script gets what the person reads on stderr.
    json_fields: Mapping[str, Any] = MappingProxyType({})


class UserInputError(RodinError):
    """Something the user typed or pointed at is wrong (unknown id, unreadable mesh, ...)."""

    exit_code = 2


class RegistryInvariantError(RodinError):
    """The registry holds something that cannot happen through rodin (a job without its row, a
    final model of another job): a bug or a hand-edited database, never bad user input."""
