"""`rodin report`: the page a person opens, checked in a real browser (headless Chromium over
the DevTools protocol), with registry strings that carry markup; and the reconstruction it runs
through a real worker when the model has none."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report_speed import Fabricated, fabricate
from tests.conftest import ROOT, Rodin, stop_process

#: Names with markup in them: the page must show them as text and run nothing.
HOSTILE_DATASET = 'sw<script>alert("ds")</script>ords'
HOSTILE_SOURCE = '<img src=x onerror=alert(1)> "generated" & more'
HOSTILE_INPUT = "<b>blade</b>&<i>hilt</i>"
ARTIFACTS = ROOT / "test-artifacts"


def _chromium() -> str | None:
    for candidate in ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get "
                                    "install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> tuple[Rodin, Fabricated]:
    """A registry whose model has 30 epochs, an evaluation and 3 reconstructions, with markup in
    its dataset's name and source and in a reconstructed input's name."""
    from sqlalchemy import update

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Dataset, Job

    rodin = Rodin(tmp_path_factory.mktemp("report") / "home")
    made = fabricate(rodin.home, epochs=30, reconstructions=3, shapes=8, name=HOSTILE_DATASET)
    with session_scope(rodin.settings()) as s:
        s.execute(update(Dataset).where(Dataset.id == made.dataset_id).values(source=HOSTILE_SOURCE))
        job = s.get(Job, made.reconstruct_job_id)
        assert job is not None
        first = job.outputs[0]["input"]
        job.outputs = [{**o, "input": HOSTILE_INPUT} if o.get("input") == first else o for o in job.outputs]
    return rodin, made


def _model(rodin: Rodin, model_id: int) -> dict[str, Any]:
    return rodin.json("models", "show", str(model_id))


# --------------------------------------------------------------------------- the browser


class DevTools:
    """Chromium driven over `--remote-debugging-pipe`: it reads commands on fd 3 and writes
    replies and events on fd 4, each a JSON object ended by a NUL byte."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()
        # Copies above 10 so that placing them at 3 and 4 in the child never clobbers one another.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)

        def place() -> None:  # in the child, before exec: dup2 clears close-on-exec
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
             "--mute-audio", "about:blank"],
            preexec_fn=place, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(profile.parent / "chromium.log").open("wb"))
        for fd in ends:
            os.close(fd)
        self._buffer, self._next_id, self.events = b"", 0, []  # type: tuple[bytes, int, list[dict[str, Any]]]

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, EOFError, TimeoutError):
            pass
        finally:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            os.close(self._to_browser)
            os.close(self._from_browser)


#: What the test reads from the rendered page, once every image has been decoded.
PAGE_STATE = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return JSON.stringify({
    title: document.title,
    metrics: Object.fromEntries([...document.querySelectorAll('#metrics td[data-metric]')]
      .map(td => [td.dataset.metric, td.textContent])),
    evaluation: [...document.querySelectorAll('table.evaluation td')].map(td => td.textContent),
    images: images.map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                              alt: i.alt, data: i.src.startsWith('data:image/png;base64,')})),
    scripts: document.scripts.length,
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
  });
})()"""


def open_in_chromium(page: Path, screenshot: Path) -> tuple[dict[str, Any], list[str]]:
    """The rendered page's state and every URL it requested; a full-page screenshot is saved."""
    assert CHROMIUM is not None
    profile = screenshot.parent / "chromium-profile"
    browser = DevTools(CHROMIUM, profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Network.enable"):
            browser.call(domain, session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        value = browser.call("Runtime.evaluate", {"expression": PAGE_STATE, "awaitPromise": True,
                                                  "returnByValue": True}, session=session)["result"]["value"]
        state = json.loads(value)
        shot = browser.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1200, "height": min(state["height"], 12000), "scale": 1}},
            session=session)
        import base64

        screenshot.write_bytes(base64.b64decode(shot["data"]))
        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
        return state, requested
    finally:
        browser.close()


def _keep(screenshot: Path, name: str) -> None:
    """Copy a screenshot to test-artifacts/ (ignored by git), for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / name)


# --------------------------------------------------------------------------- the tests


@needs_chromium
def test_report_renders_in_headless_chromium(story: tuple[Rodin, Fabricated], tmp_path: Path) -> None:
    rodin, made = story
    out = rodin.json("report", made.alias, "--out", str(tmp_path / "pages"))
    page = Path(out["report"])
    assert page == tmp_path / "pages" / f"model-{made.model_id}.html"
    assert (out["model_id"], out["reconstructions"], out["evaluations"], out["loss_curves"]) == (made.model_id, 3, 1, 1)
    assert out["reconstruct_job_id"] is None and out["notes"] == []  # it had reconstructions already

    state, requested = open_in_chromium(page, tmp_path / "report.png")
    _keep(tmp_path / "report.png", "report-page.png")

    assert state["title"] == f"rodin report: model {made.model_id} ({made.alias}) on {HOSTILE_DATASET}@1"
    metrics = _model(rodin, made.model_id)["metrics"]
    assert state["metrics"]["val_chamfer"] == f"{metrics['val_chamfer']:.6g}"
    assert state["metrics"]["train_loss"] == f"{metrics['train_loss']:.6g}"
    assert state["metrics"]["coverage"] == "0.97"
    evaluation = rodin.json("status", str(made.evaluate_job_id))["result"]
    assert f"{evaluation['chamfer']:.6g}" in state["evaluation"]
    assert f"{evaluation['retrieval_chamfer']:.6g}" in state["evaluation"]
    # 1 loss-curve plot, 1 evaluation plot, 3 reconstructions: all embedded and decoded.
    assert len(state["images"]) == 5
    for image in state["images"]:
        assert image["data"] and image["complete"] and image["width"] > 0 and image["height"] > 0, image
    # The markup in registry strings is text on the page, and nothing ran or was fetched.
    assert state["scripts"] == 0
    for text in (HOSTILE_DATASET, HOSTILE_SOURCE, HOSTILE_INPUT):
        assert text in state["text"]
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert "The model beats retrieval" in state["text"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_self_contained_and_escaped(story: tuple[Rodin, Fabricated], tmp_path: Path) -> None:
    rodin, made = story
    page = Path(rodin.json("report", str(made.model_id), "--out", str(tmp_path))["report"]).read_text()
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=alert", "")
    assert "&lt;script&gt;alert(&quot;ds&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;blade&lt;/b&gt;&amp;" in page
    # Nothing to fetch: every src is a data: URI, no link or @import, and the policy forbids more.
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"] * 5
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page
    # The lineage: one job, its 30 checkpoints folded, the final one (this model) in sight.
    assert "30 checkpoints, epochs 1\u201330" in page and "\u2190 this model" in page


def test_report_plots_checkpoints_when_the_job_stored_no_curves(story: tuple[Rodin, Fabricated],
                                                                 tmp_path: Path) -> None:
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    rodin, made = story
    with session_scope(rodin.settings()) as s:
        job = s.get(Job, made.train_job_id)
        assert job is not None
        kept, job.outputs = job.outputs, []  # as a job that failed before storing its curves
    try:
        out = rodin.json("report", str(made.model_id), "--out", str(tmp_path))
    finally:
        with session_scope(rodin.settings()) as s:
            s.get(Job, made.train_job_id).outputs = kept  # type: ignore[union-attr]
    page = Path(out["report"]).read_text()
    assert out["loss_curves"] == 1 and "loss at its 30 registered checkpoints" in page


def test_tampered_picture_is_named_not_embedded(story: tuple[Rodin, Fabricated], tmp_path: Path) -> None:
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    rodin, made = story
    with session_scope(rodin.settings()) as s:
        job = s.get(Job, made.evaluate_job_id)
        assert job is not None
        kept = job.outputs
        job.outputs = [{**o, "sha256": "0" * 64} if o["kind"] == "plot" else o for o in kept]
    try:
        out = rodin.json("report", str(made.model_id), "--out", str(tmp_path))
    finally:
        with session_scope(rodin.settings()) as s:
            s.get(Job, made.evaluate_job_id).outputs = kept  # type: ignore[union-attr]
    assert len(out["notes"]) == 1 and "does not match its recorded sha256" in out["notes"][0]
    assert "not shown (" in Path(out["report"]).read_text()


def test_no_reconstruct_writes_the_page_without_queueing(tmp_path: Path) -> None:
    rodin = Rodin(tmp_path / "home")
    made = fabricate(rodin.home, epochs=3, reconstructions=0, evaluated=False, shapes=4)
    jobs_before = len(rodin.json("status")["jobs"])
    out = rodin.json("report", made.alias, "--no-reconstruct", "--out", str(tmp_path))
    assert out["reconstructions"] == 0 and out["evaluations"] == 0 and out["reconstruct_job_id"] is None
    assert len(rodin.json("status")["jobs"]) == jobs_before
    page = Path(out["report"]).read_text()
    assert f"rodin reconstruct --model {made.model_id} --wait" in page
    assert f"rodin evaluate --model {made.model_id} --wait" in page
    # A person gets the path on stdout; an unknown model is a one-line error, exit 2.
    shown = rodin.cli("report", str(made.model_id), "--no-reconstruct", "--out", str(tmp_path))
    assert shown.returncode == 0 and shown.stdout.strip() == out["report"]
    unknown = rodin.cli("report", "nope", "--out", str(tmp_path))
    assert unknown.returncode == 2 and "alias 'nope' does not exist" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


TINY = ["--epochs", "2", "--patches", "2", "--points", "128", "--bottleneck", "16", "--hidden", "16",
        "--layers", "1", "--batch-size", "4", "--checkpoint-every", "1", "--val-fraction", "0.25"]


@needs_chromium
@pytest.mark.slow
def test_report_reconstructs_validation_shapes_through_a_worker(rodin: Rodin, tmp_path: Path) -> None:
    """A really trained model with no reconstructions: the report queues one job on its
    validation shapes, waits for it on a real worker, and embeds its pictures."""
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "600")
    worker = rodin.start_worker("w1")
    try:
        trained = rodin.json("submit", "train", "--dataset", "swords", *TINY, "--wait", timeout=600)
        assert trained["status"] == "succeeded", trained
        out = rodin.json("report", str(trained["model_id"]), "--out", str(tmp_path / "pages"))
    finally:
        stop_process(worker)
    job = rodin.json("status", str(out["reconstruct_job_id"]))
    assert job["kind"] == "reconstruct" and job["status"] == "succeeded" and job["params"]["inputs"] == []
    assert out["reconstructions"] == rodin.held_out() and out["notes"] == []  # about 25% of 8 swords
    state, _ = open_in_chromium(Path(out["report"]), tmp_path / "trained.png")
    _keep(tmp_path / "trained.png", "report-trained-model.png")
    assert len(state["images"]) == 1 + out["reconstructions"] and all(i["width"] > 0 for i in state["images"])
    assert state["metrics"]["val_chamfer"] == f"{_model(rodin, trained['model_id'])['metrics']['val_chamfer']:.6g}"
