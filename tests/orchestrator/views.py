"""Jobs as the job service hands them out, built for tests that draw or rank them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from orchestrator.job_states import JobStatus
from orchestrator.job_view import JobView


def view(id_: int, kind: str, status: str, **fields: Any) -> JobView:
    """A job as the registry would hand it out, with whatever `fields` the test cares about."""
    defaults: dict[str, Any] = dict(
        dataset="swords-from-the-museum@12", input_model_id=9001, depends_on_job_id=None, sweep_id=None,
        params={}, progress={}, worker="gpu-a@lab-box-17", device=None, attempts=0, lost=0, error=None,
        model_ids=[], final_model_id=None, outputs=[], result=None,
        created_at=datetime(2026, 12, 6, 3, tzinfo=timezone.utc), started_at=None, finished_at=None,
        heartbeat_at=None)
    return JobView(id=id_, kind=kind, status=JobStatus(status), **{**defaults, **fields})
