"""The Celery app, its queues and task names: the contract between clients and workers.

Messages carry only a job id (JSON). Everything else a task needs is in the registry.

Two brokers are supported: the embedded `filesystem://` broker (one machine, no server) and Redis
(`redis://:password@host:6379/0`, several machines). The settings below are chosen for jobs that
run for hours on one GPU each: a worker holds at most one message at a time (prefetch 1, a
prefork pool of one job process, concurrency 1) and acknowledges it only when the job has ended
(late acknowledgement), so a job whose worker stops before the end goes back to the queue
instead of being lost. How long Redis waits before handing an unacknowledged message to another
worker is `Settings.visibility_timeout_s` (`RODIN_VISIBILITY_TIMEOUT_S`).
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import filesystem as _filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

from orchestrator.kinds import KINDS, QUEUES, TRAIN_QUEUE, spec
from orchestrator.settings import Settings, load_settings

__all__ = ["QUEUES", "TASK_QUEUES", "app_for", "celery_config", "make_app", "send_job"]

#: Task name -> queue, from the one table of job kinds.
TASK_QUEUES = {s.task: s.queue for s in KINDS.values()}

#: Seconds between looks at the embedded broker's message folder: what an idle worker adds to
#: the time from `rodin submit` to the job starting. A listing of a small folder costs well
#: under a millisecond, so polling this often is cheap.
FILESYSTEM_POLL_S = 0.02

_log = logging.getLogger(__name__)


class _AtomicFilesystemChannel(_filesystem.Channel):
    """Kombu's filesystem channel, with messages that appear whole and are taken once.

    Kombu creates a message file and then writes it, so a worker polling in between takes an
    empty file: the message is lost and the worker stops on a JSON error. Here a message is
    written under a hidden name and renamed into the queue folder; a worker claims a message by
    renaming it into a folder beside it (the same file system, so the rename is atomic: of
    several workers exactly one gets it), then reads and deletes it.
    """

    def _put(self, queue, payload, **kwargs):  # type: ignore[override]  # kombu's own signature
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise _filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue, timeout=None):
        wanted = f"{queue}.msg"
        claimed_folder = self.transport_options.get("claimed_folder") or self.data_folder_in
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(claimed_folder, f".{name}.claimed")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another worker took it first
            try:
                with open(claimed, "rb") as fh:
                    payload = fh.read()
                message = loads(bytes_to_str(payload))
                if not isinstance(message, dict):
                    raise ValueError(f"a JSON {type(message).__name__}, not a message object")
            except (OSError, ValueError, TypeError, ArithmeticError, RecursionError) as exc:
                # A file that is not a message (a stray copy, a hand-edited or truncated one, a
                # folder) must not stop the worker: set it aside where a person can look at it.
                rejected = os.path.join(os.path.dirname(self.data_folder_in.rstrip(os.sep)), "rejected")
                os.makedirs(rejected, exist_ok=True)
                os.replace(claimed, os.path.join(rejected, name))
                _log.warning("embedded broker: %s is not a message (%s); moved it to %s",
                             name, " ".join(str(exc).split())[:200] or type(exc).__name__, rejected)
                continue
            os.remove(claimed)
            return message
        raise _filesystem.Empty()


class AtomicFilesystemTransport(_filesystem.Transport):
    Channel = _AtomicFilesystemChannel


#: The URL scheme Celery is given for the embedded broker (settings still say `filesystem://`).
EMBEDDED_SCHEME = "rodin-filesystem"
TRANSPORT_ALIASES[EMBEDDED_SCHEME] = f"{__name__}:AtomicFilesystemTransport"


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.embedded:
        folder = settings.broker_folder
        for sub in ("queue", "claimed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "claimed_folder": str(folder / "claimed"),
            # Exchange tables live here too, not in a `control/` folder of the current directory.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": FILESYSTEM_POLL_S,
        }
    return {
        "visibility_timeout": int(settings.visibility_timeout_s),
        # Fail fast (and say so) when the broker is unreachable, instead of hanging a client.
        "socket_connect_timeout": 10,
        "socket_timeout": 30,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # Broadcasts (Flower's inspect, `celery control`) reach only this virtual host's workers.
        "fanout_prefix": True,
        "fanout_patterns": True,
    }


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery's configuration for these settings (also what `rodin config show` reasons about)."""
    options = _transport_options(settings)
    visibility = int(settings.visibility_timeout_s)
    return dict(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        # The registry owns job state; results would only duplicate it. Should a result backend
        # ever be configured on Redis, it must use the same visibility timeout.
        task_ignore_result=True,
        result_backend=None,
        result_backend_transport_options={"visibility_timeout": visibility},
        # Read by Celery's Redis pieces that do not see broker_transport_options.
        visibility_timeout=visibility,
        # JSON only: a message can never carry a pickle.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        event_serializer="json",
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue=TRAIN_QUEUE,
        task_create_missing_queues=True,
        # Late acknowledgement: a message is acknowledged when its job has ended, so a worker
        # that stops or dies mid-job leaves it to be delivered again (the train task resumes from
        # the job's newest registered checkpoint; the registry drops repeats of finished jobs).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # If the broker connection drops, the running job goes on: should its message be
        # delivered again meanwhile, `jobs.claim` refuses to start a job held by a live worker.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Told to stop at once (SIGQUIT, `rodin down`, or SIGTERM in the containers, which set
        # REMAP_SIGTERM=SIGQUIT), a worker gives its running job this long to end by itself,
        # then interrupts it and returns its message to the queue.
        worker_soft_shutdown_timeout=float(settings.soft_shutdown_s),
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        # Task events feed Flower on a shared broker; the embedded broker has no one to read them.
        worker_send_task_events=not settings.embedded,
        task_send_sent_event=False,
        broker_heartbeat=0,
    )


def broker_url(url: str) -> str:
    """The URL Celery is given: a Redis password written as `?password=` moves into the URL's
    user part, where kombu expects it (kombu fails on the query form)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    password = [v for k, v in query if k == "password"]
    if not password or "@" in parts.netloc:
        return url
    rest = urlencode([(k, v) for k, v in query if k != "password"])
    netloc = f":{quote(password[-1], safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, rest, parts.fragment))


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    broker = f"{EMBEDDED_SCHEME}://" if settings.embedded else broker_url(settings.queue_url)
    app = Celery("rodin", broker=broker)
    app.conf.update(celery_config(settings))
    return app


_apps: dict[Settings, Celery] = {}


def app_for(settings: Settings) -> Celery:
    """This process's Celery app for `settings`: made once, so that a 256-job sweep or a reaper
    pass reuses one app and its producer pool rather than building one per message. (Celery
    resets the pools of an app inherited across a fork.)"""
    app = _apps.get(settings)
    if app is None:
        app = _apps[settings] = make_app(settings)
    return app


def send_job(app: Celery, kind: str, job_id: int) -> str:
    """Queue the task for a registered job; returns the Celery task id."""
    declared = spec(kind)
    result = app.send_task(declared.task, args=[job_id], queue=declared.queue)
    return result.id
