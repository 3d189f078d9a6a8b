"""The embedded `filesystem://` broker under concurrent senders and workers: every message is
delivered exactly once, never half-written (kombu's own channel creates the file and then writes
it, so a worker polling in between reads an empty message, loses it and stops)."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from orchestrator.settings import Settings

N = 1500


def _channel(home: str):  # type: ignore[no-untyped-def]
    from orchestrator.queue import make_app

    conn = make_app(Settings(home=Path(home))).connection()
    return conn, conn.default_channel


def _consume(home: str, done, out) -> None:  # type: ignore[no-untyped-def]
    conn, channel = _channel(home)
    got, errors = [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and done.value < N:
        try:
            got.append(channel._get("train")["body"])
            with done.get_lock():
                done.value += 1
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ != "Empty":
                errors.append(repr(exc))
    conn.release()
    out.put((got, errors))


def _produce(home: str) -> None:
    conn, channel = _channel(home)
    for i in range(N):
        channel._put("train", {"body": i})
    conn.release()


def test_every_message_is_delivered_once_to_one_of_two_workers(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    done, out = ctx.Value("i", 0), ctx.Queue()
    consumers = [ctx.Process(target=_consume, args=(str(tmp_path), done, out)) for _ in range(2)]
    producer = ctx.Process(target=_produce, args=(str(tmp_path),))
    for p in (*consumers, producer):
        p.start()
    results = [out.get(timeout=120) for _ in consumers]
    for p in (*consumers, producer):
        p.join(30)
    received = [body for got, _ in results for body in got]
    errors = [e for _, errs in results for e in errs]
    assert errors == []
    assert sorted(received) == list(range(N))
    assert all(got for got, _ in results)  # both workers took messages
    leftovers = [p.name for p in (tmp_path / "broker").rglob("*") if p.is_file()
                 and p.parent.name in ("queue", "claimed")]
    assert leftovers == []
