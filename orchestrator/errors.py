"""Errors a user can act on: one line that names the thing and the fix, and an exit code."""


class RodinError(Exception):
    exit_code = 1


class UserInputError(RodinError):
    """Something the user typed or pointed at is wrong (unknown id, unreadable mesh, ...)."""

    exit_code = 2
