"""The registry's models and workers as clients read and name them: one call, one transaction,
plain values back. What `rodin models`, `rodin workers` and the commands that take `--model`
use, so that no command opens a registry session of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from orchestrator import aliases
from orchestrator.errors import UserInputError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, ModelCheckpoint
from orchestrator.registry.queries import model_summary, parse_dataset_ref, worker_rows
from orchestrator.settings import Settings


def model_id(settings: Settings, ref: str | int) -> int:
    """A model's id from its id or alias; an unknown one is the one-line error (exit 2)."""
    with session_scope(settings) as s:
        return aliases.resolve_model(s, ref).id


def model_config(settings: Settings, ref: str | int) -> tuple[int, dict[str, Any]]:
    """(the model's id, its stored training config)."""
    with session_scope(settings) as s:
        model = aliases.resolve_model(s, ref)
        return model.id, model.config


#: `rodin models list` shows this many models unless told otherwise (--limit).
PAGE = 50


@dataclass(frozen=True)
class ModelPage:
    """One page of `rodin models list`: the models (newest first), how many match in all, and
    where the next page starts (`next_before`: the `--before` that gives it; None on the last)."""

    models: list[dict[str, Any]]
    total: int
    limit: int
    before: int | None
    page: int | None
    next_before: int | None


def page_models(settings: Settings, dataset: str | None = None, final: bool = False, *, limit: int = PAGE,
                before: int | None = None, page: int | None = None) -> ModelPage:
    """Registered models, newest first: all, those trained on NAME (any version) or NAME@V,
    and with `final` only each job's final checkpoint; `limit` of them (0: all) with ids below
    `before`, or the `page`-th page of `limit` (1 the newest). Reads the page's rows only (by
    the primary key's order) and one count."""
    if before is not None and page is not None:
        raise UserInputError("give --before ID or --page N, not both")
    if page is not None and page < 1:
        raise UserInputError(f"--page {page}: pages count from 1")
    with session_scope(settings) as s:
        where = []
        if dataset:
            name, version = parse_dataset_ref(dataset)
            versions = select(Dataset.id).where(Dataset.name == name)
            if version is not None:
                versions = versions.where(Dataset.version == version)
            where.append(ModelCheckpoint.dataset_id.in_(versions))
        if final:
            where.append(ModelCheckpoint.final.is_(True))
        total = int(s.scalar(select(func.count()).select_from(ModelCheckpoint).where(*where)) or 0)
        query = select(ModelCheckpoint).where(*where).order_by(ModelCheckpoint.id.desc())
        if before is not None:
            query = query.where(ModelCheckpoint.id < before)
        if limit:
            query = query.limit(limit + 1)
            if page is not None:
                query = query.offset((page - 1) * limit)
        rows = list(s.scalars(query))
        more = bool(limit) and len(rows) > limit
        rows = rows[:limit] if limit else rows
        return ModelPage([model_summary(s, m) for m in rows], total, limit, before, page,
                         rows[-1].id if more and rows else None)


def list_models(settings: Settings, dataset: str | None = None, final: bool = False) -> list[dict[str, Any]]:
    """Every registered model that matches, newest first (`page_models` without a limit)."""
    return page_models(settings, dataset, final, limit=0).models


def show_model(settings: Settings, ref: str | int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A model's summary with its `lineage` (ancestor ids), `tree` (see
    `orchestrator.lineage.lineage_tree`), `aliases` and `imported_from`; and its job's outputs
    (where its plots are)."""
    from orchestrator.bundles import import_record
    from orchestrator.lineage import model_lineage

    with session_scope(settings) as s:
        model = aliases.resolve_model(s, ref)
        summary = model_summary(s, model)
        summary["lineage"], summary["tree"] = model_lineage(s, model)
        summary["aliases"] = aliases.aliases_of(s, model.id)
        summary["imported_from"] = import_record(s, model.id)
        return summary, list(model.job.outputs)


def tag(settings: Settings, ref: str | int, name: str) -> tuple[int, int | None]:
    """Name a model (or move the name to it): (its id, the model the name meant before)."""
    with session_scope(settings) as s:
        target = aliases.resolve_model(s, ref).id
        return target, aliases.tag(s, target, name)


def untag(settings: Settings, name: str) -> int:
    """Remove an alias; returns the model it named."""
    with session_scope(settings) as s:
        return aliases.untag(s, name)


def tags(settings: Settings, name: str | None = None) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(alias -> model id, every change oldest first), of all aliases or of one (an unknown
    one is the one-line error)."""
    with session_scope(settings) as s:
        now, changes = aliases.current(s), aliases.history(s, name)
        if name is not None and name not in now and not changes:
            aliases.resolve_model(s, name)  # the one-line error for an unknown alias
    if name is not None:
        now = {k: v for k, v in now.items() if k == name}
    return now, changes


def workers(settings: Settings, include_gone: bool = False) -> list[dict[str, Any]]:
    """The workers table (`registry.queries.worker_rows`): live ones, or all with `include_gone`."""
    with session_scope(settings) as s:
        return worker_rows(s, settings.worker_timeout_s, include_gone=include_gone)


def dataset_ref(settings: Settings, ref: str) -> tuple[int, str, int]:
    """A dataset version by NAME or NAME@V: (id, `name@N`, shapes); unknown: the one-line error."""
    from orchestrator.registry.queries import resolve_dataset

    with session_scope(settings) as s:
        ds = resolve_dataset(s, ref)
        return ds.id, ds.ref, ds.shape_count
