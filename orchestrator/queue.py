"""The Celery app, its queues and task names: the contract between clients and workers.

Messages carry only a job id (JSON). Everything else a task needs is in the registry.
"""

from __future__ import annotations

from celery import Celery

from orchestrator.settings import Settings, load_settings

TRAIN_QUEUE = "train"
INFER_QUEUE = "infer"
TASK_QUEUES = {"rodin.train": TRAIN_QUEUE, "rodin.reconstruct": INFER_QUEUE}
KIND_TASKS = {"train": "rodin.train", "reconstruct": "rodin.reconstruct"}

#: Hours-long GPU jobs: Redis must not hand an unacknowledged task to a second worker early.
VISIBILITY_TIMEOUT_S = 24 * 3600


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.embedded:
        folder = settings.broker_folder
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT_S}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    app = Celery("rodin", broker=settings.queue_url)
    options = _transport_options(settings)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        # The registry owns job state; results would only duplicate it.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue=TRAIN_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_heartbeat=0,
    )
    return app


def send_job(app: Celery, kind: str, job_id: int) -> str:
    """Queue the task for a registered job; returns the Celery task id."""
    task = KIND_TASKS[kind]
    result = app.send_task(task, args=[job_id], queue=TASK_QUEUES[task])
    return result.id
