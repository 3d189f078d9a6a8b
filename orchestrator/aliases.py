"""Model aliases: a name for a model (`swords-best`), accepted wherever a model id is.

Moving an alias keeps its history (`model_alias_events`), so "which model did `swords-best`
mean last Tuesday" has an answer.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.errors import UserInputError
from orchestrator.registry.db import as_utc
from orchestrator.registry.models import ModelAlias, ModelAliasEvent, ModelCheckpoint, utcnow
from orchestrator.registry.queries import get_model

ID_MAX = 2**63 - 1
#: A letter first (so that a name is never mistaken for an id), then letters, digits, . _ -
NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")


def resolve_model(session: Session, ref: str | int) -> ModelCheckpoint:
    """A model by id (`42`) or alias (`swords-best`); an unknown one is a one-line error."""
    text = str(ref).strip()
    if text.isascii() and text.isdigit():
        number = int(text)
        if not 1 <= number <= ID_MAX:
            raise UserInputError(f"model id {text[:24]} is out of range (1 to 2^63-1)")
        return get_model(session, number)
    alias = session.scalars(select(ModelAlias).where(ModelAlias.name == text)).first()
    if alias is None:
        raise UserInputError(f"model alias {text[:64]!r} does not exist; list aliases with "
                             "`rodin models tags`, set one with `rodin models tag ID NAME`")
    return get_model(session, alias.model_id)


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise UserInputError(f"alias {name[:64]!r} must start with a letter and hold only letters, "
                             "digits, '.', '_' and '-' (at most 128 characters)")


def tag(session: Session, model_id: int, name: str) -> int | None:
    """Point `name` at `model_id` (setting or moving it); returns the model it pointed at before."""
    check_name(name)
    get_model(session, model_id)
    alias = session.scalars(select(ModelAlias).where(ModelAlias.name == name)).first()
    before = alias.model_id if alias is not None else None
    if before == model_id:
        return before
    if alias is None:
        session.add(ModelAlias(name=name, model_id=model_id))
    else:
        alias.model_id, alias.updated_at = model_id, utcnow()
    session.add(ModelAliasEvent(name=name, from_model_id=before, to_model_id=model_id))
    return before


def untag(session: Session, name: str) -> int:
    """Remove an alias; returns the model it pointed at."""
    alias = session.scalars(select(ModelAlias).where(ModelAlias.name == name)).first()
    if alias is None:
        raise UserInputError(f"model alias {name[:64]!r} does not exist; list aliases with `rodin models tags`")
    model_id = alias.model_id
    session.delete(alias)
    session.add(ModelAliasEvent(name=name, from_model_id=model_id, to_model_id=None))
    return model_id


def current(session: Session) -> dict[str, int]:
    """alias -> model id."""
    return {a.name: a.model_id for a in session.scalars(select(ModelAlias).order_by(ModelAlias.name))}


def aliases_of(session: Session, model_id: int) -> list[str]:
    return list(session.scalars(select(ModelAlias.name).where(ModelAlias.model_id == model_id)
                                .order_by(ModelAlias.name)))


def history(session: Session, name: str | None = None) -> list[dict[str, Any]]:
    """Every change of every alias (or of one), oldest first."""
    query = select(ModelAliasEvent).order_by(ModelAliasEvent.id)
    if name is not None:
        query = query.where(ModelAliasEvent.name == name)
    return [{"name": e.name, "from_model_id": e.from_model_id, "to_model_id": e.to_model_id,
             "at": _iso(e.at)} for e in session.scalars(query)]


def _iso(moment: Any) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat() if moment is not None else None
