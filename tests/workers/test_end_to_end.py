"""The vertical slice with real parts: CLI -> filesystem broker -> Celery worker process ->
SQLite registry + artifact store -> reconstruction by model id."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh

from atlas_core.config import INFER
from tests.conftest import Rodin, stop_process

#: The worker's name as the registry, `rodin status` and `rodin workers` show it: `w1@%h` expanded.
W1 = f"w1@{os.uname().nodename}"

TINY = ["--epochs", "3", "--patches", "4", "--points", "128", "--bottleneck", "32",
        "--hidden", "32", "--layers", "1", "--batch-size", "4", "--checkpoint-every", "1",
        "--val-fraction", "0.25"]


def _held_out(rodin: Rodin) -> int:
    """How many of the 8 swords the training split (by identity, `atlas_core.data.split_of`,
    val fraction 0.25, seed 0) holds out: 0.25 of them on average, not exactly."""
    from atlas_core.data import split_of
    from orchestrator import datasets
    from orchestrator.artifacts import open_store
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Dataset
    from orchestrator.settings import load_settings

    settings = load_settings({"RODIN_HOME": str(rodin.home)})
    with session_scope(settings) as s:
        row = s.query(Dataset).filter_by(name="swords", version=1).one()
        uri, sha256 = row.artifact_uri, row.artifact_sha256
    return len(split_of(datasets.open_version(open_store(settings), uri, sha256), 0.25, 0)[1])


#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("slice_home",)


@pytest.fixture(scope="module")
def slice_home(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A home with 8 swords and one live worker, shared by the tests of this module."""
    rodin = Rodin(tmp_path_factory.mktemp("e2e") / "home")
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "600")
    worker = rodin.start_worker("w1@%h")  # Celery's %h: the host name
    yield rodin
    stop_process(worker)
    assert list(rodin.worker_cwd.iterdir()) == []  # the worker writes only under RODIN_HOME


@pytest.fixture(scope="module")
def trained(slice_home: Rodin) -> dict:
    out = slice_home.json("submit", "train", "--dataset", "swords", *TINY, "--wait", timeout=600)
    assert out["status"] == "succeeded", out
    return out


def test_training_registers_every_checkpoint_with_sha256_and_parents(slice_home: Rodin, trained: dict) -> None:
    job = slice_home.json("status", str(trained["job_id"]))
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["worker"] == W1
    models = sorted(slice_home.json("models", "list")["models"], key=lambda m: m["id"])
    assert [m["epoch"] for m in models] == [1, 2, 3]
    assert job["model_ids"] == [m["id"] for m in models]
    # keep-best: the final model is the checkpoint with the lowest validation Chamfer
    finals = [m for m in models if m["final"]]
    assert [m["id"] for m in finals] == [trained["model_id"]]
    assert finals[0]["metrics"]["val_chamfer"] == min(m["metrics"]["val_chamfer"] for m in models)
    assert [m["parent_id"] for m in models] == [None, models[0]["id"], models[1]["id"]]
    for m in models:
        blob = Path(m["artifact_uri"].removeprefix("file://")).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == m["sha256"]
        assert len(blob) == m["size_bytes"]
        assert m["dataset"] == "swords@1" and m["job_id"] == trained["job_id"]
        assert set(m["metrics"]) >= {"train_loss", "val_chamfer"}
        assert m["config"]["model"]["n_patches"] == 4
        assert m["code_version"] and m["torch_version"].startswith("2.")


def test_models_show_gives_lineage(slice_home: Rodin, trained: dict) -> None:
    job = slice_home.json("status", str(trained["job_id"]))
    first, second, last = job["model_ids"]
    shown = slice_home.json("models", "show", str(last))
    assert shown["epoch"] == 3 and shown["dataset"] == "swords@1"
    assert shown["lineage"] == [second, first]
    assert shown["parent_id"] == second


def test_loss_curves_are_stored_and_written_by_models_show(slice_home: Rodin, trained: dict, tmp_path: Path) -> None:
    shown = slice_home.json("models", "show", str(trained["model_id"]), "--plots", str(tmp_path))
    assert shown["plots"] and Path(shown["plots"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reconstruct_validation_shapes_by_model_id(slice_home: Rodin, trained: dict, tmp_path: Path) -> None:
    out = slice_home.json("reconstruct", "--model", str(trained["model_id"]), "--wait",
                          "--out", str(tmp_path / "rec"), timeout=300)
    assert out["status"] == "succeeded"
    plys = [Path(p) for p in out["outputs"] if p.endswith(".ply")]
    pngs = [Path(p) for p in out["outputs"] if p.endswith(".png")]
    held_out = _held_out(slice_home)  # about 25% of 8 swords
    assert len(plys) == held_out and len(pngs) == held_out
    mesh = trimesh.load(plys[0], process=False)
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    colours = np.unique(mesh.visual.vertex_colors[:, :3], axis=0)
    assert len(colours) == 4  # one colour per patch
    assert pngs[0].read_bytes()[:4] == b"\x89PNG"
    job = slice_home.json("status", str(out["job_id"]))
    assert job["input_model_id"] == trained["model_id"]


def test_reconstruct_a_user_mesh_in_its_own_coordinates(slice_home: Rodin, trained: dict, tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(2.0, 8.0, 1.0))
    box.apply_translation((100.0, -50.0, 20.0))
    path = tmp_path / "big_box.stl"
    box.export(path)
    out = slice_home.json("reconstruct", "--model", str(trained["model_id"]), str(path),
                          "--wait", "--out", str(tmp_path / "rec"), timeout=300)
    assert out["status"] == "succeeded"
    mesh = trimesh.load(tmp_path / "rec" / "big_box.ply", process=False)
    # Normalisation is undone: the reconstruction sits where the input was, at its size.
    assert np.linalg.norm(mesh.vertices.mean(0) - box.centroid) < 5.0
    radius = np.linalg.norm(box.vertices - box.centroid, axis=1).max()
    assert 0.2 * radius < np.linalg.norm(mesh.vertices - box.centroid, axis=1).max() < 3 * radius


def test_evaluate_scores_the_model_against_retrieval(slice_home: Rodin, trained: dict, tmp_path: Path) -> None:
    out = slice_home.json("evaluate", "--model", str(trained["model_id"]), "--wait",
                          "--out", str(tmp_path), timeout=300)
    assert sorted(Path(p).name for p in out["outputs"]) == ["evaluation.json", "evaluation.png"]
    assert out["status"] == "succeeded"
    for key in ("chamfer", "fscore", "normal_consistency", "coverage", "retrieval_chamfer"):
        assert isinstance(out[key], float) and out[key] >= 0, key
    assert 0 <= out["fscore"] <= 1 and 0 <= out["coverage"] <= 1
    assert out["beats_retrieval"] == (out["chamfer"] < out["retrieval_chamfer"])
    held_out = _held_out(slice_home)
    assert len(out["per_shape"]) == held_out and out["retrieval_library"] == 8 - held_out
    assert {r["retrieved"] for r in out["per_shape"]} <= {f"sword_{i:04d}" for i in range(8)}
    text = slice_home.run("evaluate", "--model", str(trained["model_id"]), "--dataset", "swords",
                          "--wait", cwd=tmp_path)
    assert text.returncode == 0 and "beat" in text.stdout and "retrieval" in text.stdout


def test_tampered_checkpoint_is_refused(slice_home: Rodin, trained: dict) -> None:
    first = sorted(slice_home.json("models", "list")["models"], key=lambda m: m["id"])[0]
    blob = Path(first["artifact_uri"].removeprefix("file://"))
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(original[:-10] + b"0123456789")
    try:
        out = slice_home.json("reconstruct", "--model", str(first["id"]), "--wait",
                              expect_code=1, timeout=300)
        assert out["status"] == "failed"
        assert "does not match its recorded sha256" in out["error"]
    finally:
        blob.write_bytes(original)


def test_fine_tune_records_the_parent_model(slice_home: Rodin, trained: dict) -> None:
    out = slice_home.json("submit", "train", "--dataset", "swords", "--from-model",
                          str(trained["model_id"]), "--epochs", "1", "--points", "128",
                          "--batch-size", "4", "--wait", timeout=600)
    assert out["status"] == "succeeded"
    shown = slice_home.json("models", "show", str(out["model_id"]))
    assert shown["parent_id"] == trained["model_id"]  # one epoch: its only checkpoint
    assert shown["lineage"][0] == trained["model_id"]
    assert shown["config"]["model"]["n_patches"] == 4  # the architecture comes from the parent
    refused = slice_home.cli("submit", "train", "--dataset", "swords", "--from-model",
                             str(trained["model_id"]), "--patches", "9")
    assert refused.returncode == 2 and "differs from the model being fine-tuned" in refused.stderr


def test_cancel_queued_and_running_jobs(slice_home: Rodin) -> None:
    import time

    long = [*TINY]
    long[long.index("--epochs") + 1] = "500"
    running = slice_home.json("submit", "train", "--dataset", "swords", *long)["job_id"]
    queued = slice_home.json("submit", "train", "--dataset", "swords", *TINY)["job_id"]
    deadline = time.monotonic() + 120
    while slice_home.json("status", str(running))["progress"].get("epoch", 0) < 1:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.3)
    # One worker, busy: the second job is still queued, and cancelling ends it at once.
    assert slice_home.json("cancel", str(queued))["status"] == "cancelled"
    assert slice_home.json("cancel", str(running))["status"] == "running"
    while (job := slice_home.json("status", str(running)))["status"] == "running":
        assert time.monotonic() < deadline, "the running job did not stop"
        time.sleep(0.3)
    assert job["status"] == "cancelled"
    assert job["progress"]["epoch"] < 500
    time.sleep(1.5)  # the worker now receives the cancelled job's message and must skip it
    skipped = slice_home.json("status", str(queued))
    assert skipped["status"] == "cancelled" and skipped["attempts"] == 0


def test_status_lists_jobs_with_workers(slice_home: Rodin, trained: dict) -> None:
    jobs = slice_home.json("status")["jobs"]
    assert {"id", "kind", "status", "worker"} <= set(jobs[0])
    assert any(j["id"] == trained["job_id"] and j["worker"] == W1 for j in jobs)
    text = slice_home.cli("status")
    assert text.returncode == 0 and "succeeded" in text.stdout
    # One name for one worker: the job's worker is the one `rodin workers` lists, expanded.
    assert [w["hostname"] for w in slice_home.json("workers")["workers"]] == [W1]
    assert "%h" not in text.stdout and "%h" not in slice_home.cli("workers").stdout


def test_cli_never_shows_a_traceback_on_bad_flags(slice_home: Rodin) -> None:
    result = slice_home.cli("submit", "train", "--dataset", "swords", "--template", "cube")
    assert result.returncode == 2 and "template must be square or sphere" in result.stderr
    assert "Traceback" not in result.stderr


def test_pretrain_then_fine_tune_and_the_base_is_reused(slice_home: Rodin) -> None:
    tiny = ["--patches", "4", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
            "--batch-size", "4", "--epochs", "2", "--checkpoint-every", "1"]
    flags = ["--pretrain", "swords", "--pretrain-shapes", "6", "--pretrain-epochs", "2", *tiny]
    first = slice_home.json("submit", "train", "--dataset", "swords", *flags, "--wait")
    assert first["status"] == "succeeded", first
    assert first["pretrain_job_id"] is not None and first["base_model_id"] is not None
    pretrain = slice_home.json("status", str(first["pretrain_job_id"]))
    assert pretrain["status"] == "succeeded" and pretrain["final_model_id"] == first["base_model_id"]
    shown = slice_home.json("models", "show", str(first["model_id"]))
    assert first["base_model_id"] in shown["lineage"]  # the base is the fine-tune's ancestor
    assert shown["config"]["lr"] == 1e-4 and shown["config"]["augment"]["scale"] == 0.1  # the recipe
    again = slice_home.json("submit", "train", "--dataset", "swords", *flags, "--lr", "3e-4",
                            "--rehearsal", "0.5", "--wait")
    assert again["status"] == "succeeded" and again["pretrain_job_id"] is None
    assert again["base_model_id"] == first["base_model_id"]  # reused, not retrained
    config = slice_home.json("models", "show", str(again["model_id"]))["config"]
    assert config["lr"] == 3e-4 and config["rehearsal"] == 0.5  # the base's shapes were rehearsed


def test_training_from_scratch_on_few_shapes_says_so(slice_home: Rodin) -> None:
    out = slice_home.json("submit", "train", "--dataset", "swords", *TINY)
    assert any("--pretrain auto" in w for w in out["warnings"])
    slice_home.json("cancel", str(out["job_id"]))


def test_reconstruct_refines_a_point_cloud_and_leaves_the_model_alone(
        slice_home: Rodin, trained: dict, tmp_path: Path) -> None:
    shown = slice_home.json("models", "show", str(trained["model_id"]))
    blob = Path(shown["artifact_uri"].removeprefix("file://"))
    weights_before = blob.read_bytes()
    sword = trimesh.creation.box(extents=(0.1, 1.0, 0.05))
    scan = tmp_path / "scan.xyz"  # points only, no normals
    points = sword.sample(800)
    scan.write_text("\n".join(" ".join(f"{v:.5f}" for v in p) for p in points))
    out = slice_home.json("reconstruct", "--model", str(trained["model_id"]), str(scan), "--refine", "20",
                          "--wait", "--out", str(tmp_path / "rec"))
    assert out["status"] == "succeeded", out
    [result] = out["results"]
    assert result["input"] == "scan" and result["chamfer_after"] <= result["chamfer_before"]
    how = result["refinement"]  # what was done to this input: steps, two sides, trimmed faces
    assert how["latent_steps"] >= 1 and how["decoder_steps"] == INFER.refine_split(20)[1]  # every one of its steps
    assert "faces_trimmed" in how and how["faces_before_trim"] > 0
    assert how["two_sided"] == how["decoders_refined"]  # a kept phase 2 is two-sided
    assert any(p.endswith("scan.ply") for p in out["outputs"])
    job = slice_home.json("status", str(out["job_id"]))
    code, decoders = INFER.refine_split(20)
    assert job["params"]["refine"] == {"latent_steps": code, "decoder_steps": decoders}  # recorded
    assert blob.read_bytes() == weights_before  # the registered model is never changed
    plain = slice_home.json("reconstruct", "--model", str(trained["model_id"]), str(scan), "--refine", "0",
                            "--wait", "--out", str(tmp_path / "plain"))
    [unrefined] = plain["results"]
    assert unrefined["chamfer_after"] == unrefined["chamfer_before"] == result["chamfer_before"]


def test_the_final_model_carries_its_out_of_distribution_statistics(slice_home: Rodin, trained: dict) -> None:
    ood = slice_home.json("models", "show", str(trained["model_id"]))["metrics"]["ood"]
    held_out = _held_out(slice_home)  # the training shapes are the reference below 2
    assert ood["shapes"] == (held_out if held_out >= 2 else 8 - held_out) and ood["chamfer_q95"] > 0 and len(ood["latent_mean"]) == 32


def test_aliases_name_models_everywhere_and_keep_their_history(slice_home: Rodin, trained: dict) -> None:
    ids = slice_home.json("status", str(trained["job_id"]))["model_ids"]
    first, last = ids[0], ids[-1]
    assert slice_home.json("models", "tag", str(first), "swords-best")["previous_model_id"] is None
    assert slice_home.json("models", "tag", str(last), "swords-best")["previous_model_id"] == first
    shown = slice_home.json("models", "show", "swords-best")
    assert shown["id"] == last and shown["aliases"] == ["swords-best"]
    out = slice_home.json("reconstruct", "--model", "swords-best", "--refine", "0", "--wait")
    assert out["status"] == "succeeded"
    assert slice_home.json("status", str(out["job_id"]))["input_model_id"] == last
    history = slice_home.json("models", "tags", "swords-best")["history"]
    assert [(h["from_model_id"], h["to_model_id"]) for h in history] == [(None, first), (first, last)]
    slice_home.json("models", "untag", "swords-best")
    refused = slice_home.cli("reconstruct", "--model", "swords-best")
    assert refused.returncode == 2 and "model alias 'swords-best' does not exist" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert slice_home.cli("models", "tag", str(first), "42").returncode == 2  # a name is never an id


def test_models_show_draws_a_compact_lineage(slice_home: Rodin, trained: dict) -> None:
    tree = slice_home.json("models", "show", str(trained["model_id"]))["tree"]
    [job] = tree["jobs"]
    assert tree["dataset"] == "swords@1" and job["job_id"] == trained["job_id"]
    # One level for the job's checkpoints, however many epochs (not one level per checkpoint):
    # all of them in epoch order, those after a keep-best model too, the model the final one.
    epochs = [c["epoch"] for c in job["checkpoints"]]
    assert epochs == sorted(epochs) and len(epochs) == len(set(epochs))
    [final] = [c for c in job["checkpoints"] if c["final"]]
    assert final["model_id"] == trained["model_id"]
    assert final["epoch"] == slice_home.json("models", "show", str(trained["model_id"]))["epoch"]
    text = slice_home.cli("models", "show", str(trained["model_id"])).stdout
    assert "<- this model" in text and "final" in text
