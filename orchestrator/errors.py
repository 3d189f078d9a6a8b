"""Errors a user can act on: one line that names the thing and the fix, and an exit code."""


class RodinError(Exception):
    exit_code = 1


class UserInputError(RodinError):
    """Something the user typed or pointed at is wrong (unknown id, unreadable mesh, ...)."""

    exit_code = 2


class RegistryInvariantError(RodinError):
    """The registry holds something that cannot happen through rodin (a job without its row, a
    final model of another job): a bug or a hand-edited database, never bad user input."""
