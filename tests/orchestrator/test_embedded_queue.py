"""The embedded broker's queue folder: a file that is not a message never stops a worker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from orchestrator.queue import make_app, send_job
from orchestrator.settings import Settings


def test_a_file_that_is_not_a_message_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(Settings(home=tmp_path))
    queue = tmp_path / "broker" / "queue"
    send_job(app, "train", 7)  # creates the folders; garbage named to sort before it below
    garbage = {"0_garbage.train.msg": b"\x00\xffnot json at all",
               "0_list.train.msg": b"[1, 2, 3]",
               "0_truncated.train.msg": b'{"body": "abc',
               "0_deep.train.msg": b"[" * 100000}
    for name, data in garbage.items():
        (queue / name).write_bytes(data)
    (queue / "0_folder.train.msg").mkdir()
    caplog.set_level(logging.WARNING, logger="orchestrator.queue")

    with app.connection() as conn:
        message = conn.default_channel.basic_get("train")
        assert message is not None
        assert message.headers["task"] == "rodin.train"
        assert message.decode()[0] == [7]
        message.ack()
        assert conn.default_channel.basic_get("train") is None  # nothing else is a message

    rejected = tmp_path / "broker" / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == sorted([*garbage, "0_folder.train.msg"])
    assert all((rejected / name).read_bytes() == data for name, data in garbage.items())
    assert [p.name for p in queue.iterdir()] == []
    assert [p for p in (tmp_path / "broker" / "claimed").iterdir()] == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "orchestrator.queue"]
    assert len(warnings) == len(garbage) + 1
    assert all(any(name in w and "is not a message" in w for w in warnings) for name in garbage)
    assert all("\n" not in w for w in warnings)
