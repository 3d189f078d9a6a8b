"""The one error of mesh ingestion, and the short text that every reason is built from.

Callers (CLI, workers) print ``"<path>: <reason>"`` on one line, so every reason is one line
and parser messages are cut to a readable length before they become part of one.
"""

from __future__ import annotations

import os

__all__ = ["MeshError", "short_reason"]

_MAX_MESSAGE = 160


class MeshError(ValueError):
    """A mesh file (or mesh) without a usable surface.

    ``str(err)`` is a one-line reason a user can act on, without the path, e.g.
    ``"no faces: the file holds only points (a point cloud), rodin needs a surface mesh"``;
    ``err.reason`` is the same text and ``err.path`` the offending path (or ``None``).
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        # Callers print "<path>: <reason>" on one line, so the reason must never span lines.
        reason = " ".join(str(reason).split()) or "unusable mesh"
        super().__init__(reason)
        self.reason: str = reason
        self.path: str | None = None if path is None else os.fspath(path)


def short_reason(exc: BaseException) -> str:
    """One short line describing an exception raised by a parser."""
    text = " ".join(str(exc).split()).strip(" '\"") or type(exc).__name__
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text
