"""Worker names take Celery's node-name variables, expanded before they are stored or shown."""

from __future__ import annotations

import os

import pytest

from workers.main import expand_name


@pytest.mark.parametrize("node, expected", [
    ("gpu-box.lab.example.org", "a@gpu-box.lab.example.org b=gpu-box c=lab.example.org"),
    ("gpu-box", "a@gpu-box b=gpu-box c="),
])
def test_percent_h_n_d_as_celery_expands_them(monkeypatch: pytest.MonkeyPatch, node: str, expected: str) -> None:
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: type(real)((real.sysname, node, *real[2:])))
    assert expand_name("a@%h b=%n c=%d") == expected
    assert expand_name("plain-name") == "plain-name"
