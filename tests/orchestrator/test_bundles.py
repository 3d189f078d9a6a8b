"""`rodin models export` / `rodin models import` with real parts: one tiny model trained by a
real worker, exported by its alias, imported into fresh registries (new ids, the same sha256s and
lineage), and tampered, truncated or foreign files refused with nothing written."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bundles import canonical, records_sha256
from tests.conftest import Rodin, stop_process

TINY = ["--epochs", "2", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
        "--patches", "2", "--batch-size", "4", "--checkpoint-every", "1", "--val-fraction", "0.25",
        "--keep-last"]


@dataclass(frozen=True)
class Source:
    """The exporting registry, its final model (with its ancestors) and the bundle of it."""

    rodin: Rodin
    dataset: dict[str, Any]
    model: dict[str, Any]
    ancestors: list[dict[str, Any]]
    bundle: Path
    exported: dict[str, Any]


#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("source",)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """6 swords, a 2-epoch model (final: the last epoch, whose parent is the first), tagged
    `best`, exported by that alias. The worker is stopped once it has trained."""
    root = tmp_path_factory.mktemp("bundles")
    rodin = Rodin(root / "home")
    dataset = rodin.json("datasets", "make", "swords", "--count", "6", "--points-per-shape", "600")["dataset"]
    worker = rodin.start_worker("w1", queues="train")
    try:
        trained = rodin.json("submit", "train", "--dataset", "swords", *TINY, "--wait")
    finally:
        stop_process(worker)
    assert trained["status"] == "succeeded", trained
    rodin.json("models", "tag", str(trained["model_id"]), "best")
    model = rodin.json("models", "show", "best")
    assert model["id"] == trained["model_id"] and model["lineage"], model  # an ancestor to carry
    ancestors = [rodin.json("models", "show", str(i)) for i in model["lineage"]]
    bundle = root / "best.rodin"
    exported = rodin.json("models", "export", "best", str(bundle))
    yield Source(rodin, dataset, model, ancestors, bundle, exported)
    rodin.run("down", "--timeout", "10")


def state(rodin: Rodin) -> tuple[dict[str, int], set[str]]:
    """Row counts of what an import writes, and the artifact store's files."""
    from sqlalchemy import func, select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Dataset, Job, ModelCheckpoint, ModelImport

    with session_scope(rodin.settings()) as s:
        counts = {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                  for t in (Dataset, Job, ModelCheckpoint, ModelImport)}
    root = rodin.home / "artifacts"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()
    return counts, files


def seeded(rodin: Rodin) -> None:
    """A registry with a history of its own (a dataset and a cancelled job), so that the ids an
    import gets cannot coincide with the exporter's by chance."""
    from orchestrator import jobs
    from orchestrator.registry.models import JobKind

    other = rodin.json("datasets", "make", "swords", "--name", "other", "--count", "2", "--points-per-shape", "100")
    job_id = jobs.submit(rodin.settings(), JobKind.train, params={}, dataset_id=other["dataset"]["id"])
    assert rodin.cli("cancel", str(job_id)).returncode == 0


def manifest_of(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        return json.loads(handle.read())


def members_of(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        out = {}
        for member in tar:
            handle = tar.extractfile(member)
            assert handle is not None
            out[member.name] = handle.read()
        return out


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ------------------------------------------------------------------------------------ export


def test_export_by_alias_writes_the_model_its_lineage_and_its_data(source: Source) -> None:
    out, model = source.exported, source.model
    assert out["model_id"] == model["id"] and out["sha256"] == model["sha256"]
    assert out["lineage"] == model["lineage"] and out["data_included"] is True
    assert out["file"] == str(source.bundle) and out["size_bytes"] == source.bundle.stat().st_size
    manifest = manifest_of(source.bundle)
    assert manifest["records_sha256"] == records_sha256(manifest)
    assert [m["id"] for m in manifest["models"]] == [model["id"], *model["lineage"]]
    assert [m["sha256"] for m in manifest["models"]] == [model["sha256"], *(a["sha256"] for a in source.ancestors)]
    assert {b["role"] for b in manifest["blobs"]} >= {"weights", "dataset"}
    names = set(members_of(source.bundle))
    assert names == {"manifest.json", *(f"blobs/{b['sha256']}" for b in manifest["blobs"])}


def test_export_refuses_to_overwrite_or_an_unknown_model(source: Source, tmp_path: Path) -> None:
    rodin, before = source.rodin, source.bundle.read_bytes()
    again = rodin.cli("models", "export", "best", str(source.bundle))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert source.bundle.read_bytes() == before
    unknown = rodin.cli("models", "export", "nosuchalias", str(tmp_path / "x.rodin"))
    assert unknown.returncode == 2 and "nosuchalias" in unknown.stderr, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.rodin").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


# ------------------------------------------------------------------------------------ import


def test_import_into_a_fresh_registry_keeps_sha256s_and_lineage(source: Source, rodin: Rodin) -> None:
    seeded(rodin)
    before, _ = state(rodin)
    out = rodin.json("models", "import", str(source.bundle))
    model = source.model
    # New ids here; the original ones are kept in the record.
    assert out["already_registered"] is False and out["sha256"] == model["sha256"]
    assert out["models"] == [{"id": out["model_id"], "sha256": model["sha256"], "original_id": model["id"]}]
    assert out["model_id"] != model["id"] and out["job_id"] != model["job_id"]
    assert out["dataset_id"] != source.dataset["id"] and out["dataset"] == "swords@1" and out["data_included"]
    assert out["original"] == {"registry": out["original"]["registry"], "model_id": model["id"],
                               "job_id": model["job_id"], "dataset_id": source.dataset["id"]}
    after, files = state(rodin)
    assert after == {**before, "datasets": before["datasets"] + 1, "jobs": before["jobs"] + 1,
                     "models": before["models"] + 1, "model_imports": 1}

    shown = rodin.json("models", "show", str(out["model_id"]))
    assert shown["sha256"] == model["sha256"] and shown["size_bytes"] == model["size_bytes"]
    assert shown["epoch"] == model["epoch"] and shown["final"] is True and shown["config"] == model["config"]
    assert shown["metrics"] == model["metrics"]
    assert shown["parent_id"] is None and shown["lineage"] == []  # its ancestors live in the exporter
    assert shown["job_id"] == out["job_id"] and shown["dataset"] == "swords@1"
    origin = shown["imported_from"]
    assert origin["model_id"] == model["id"] and origin["job_id"] == model["job_id"]
    assert origin["sha256"] == model["sha256"] and origin["bundle_sha256"] == source.exported["bundle_sha256"]
    assert origin["registry"] == out["original"]["registry"] and origin["registry"].startswith("sqlite")
    assert [(a["model_id"], a["sha256"]) for a in origin["lineage"]] == \
        [(model["id"], model["sha256"]), *((a["id"], a["sha256"]) for a in source.ancestors)]
    assert any(f.endswith(".pt") for f in files) and any(f.endswith(".npz") for f in files)

    text = rodin.cli("models", "show", str(out["model_id"]))
    assert text.returncode == 0 and f"imported from {origin['registry']} model {model['id']}" in text.stdout

    # The job that "made" it is a succeeded training that never ran, naming where it came from.
    job = rodin.json("status", str(out["job_id"]))
    assert job["status"] == "succeeded" and job["params"]["imported_from"]["model_id"] == model["id"]
    assert job["result"]["final_model_id"] == out["model_id"]

    # The same dataset content: its cached point clouds travelled with their sha256.
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Dataset

    with session_scope(rodin.settings()) as s:
        here = s.get(Dataset, out["dataset_id"])
        assert here is not None
        content, clouds, where = here.content_sha256, here.artifact_sha256, here.artifact_uri
    with session_scope(source.rodin.settings()) as s:
        there = s.get(Dataset, source.dataset["id"])
        assert there is not None
        assert (content, clouds) == (there.content_sha256, there.artifact_sha256)
    # A version stored as shards brings its shards: it loads here, each shard's sha256 checked.
    from orchestrator.artifacts import open_store
    from orchestrator.datasets import load_version

    assert any(b["role"] == "shard" for b in manifest_of(source.bundle)["blobs"])
    assert len(load_version(open_store(rodin.settings()), where, clouds)) == source.dataset["shapes"]


def test_importing_twice_says_already_registered(source: Source, rodin: Rodin) -> None:
    first = rodin.json("models", "import", str(source.bundle))
    before = state(rodin)
    again = rodin.cli("models", "import", str(source.bundle))
    assert again.returncode == 0 and "Already registered" in again.stderr
    assert f"model {first['model_id']}" in again.stderr
    out = rodin.json("models", "import", str(source.bundle))
    assert out["already_registered"] is True and out["model_id"] == first["model_id"]
    assert state(rodin) == before
    # Back home: the exporter holds these weights already.
    home = source.rodin.json("models", "import", str(source.bundle))
    assert home["already_registered"] is True and home["model_id"] == source.model["id"]


def test_import_without_the_point_clouds(source: Source, rodin: Rodin, tmp_path: Path) -> None:
    bundle = tmp_path / "light.rodin"
    exported = source.rodin.json("models", "export", str(source.model["id"]), str(bundle), "--no-data")
    assert exported["data_included"] is False
    assert "dataset" not in {b["role"] for b in manifest_of(bundle)["blobs"]}
    out = rodin.json("models", "import", str(bundle))
    assert out["data_included"] is False and out["sha256"] == source.model["sha256"]
    _, files = state(rodin)
    assert not any(f.endswith(".npz") for f in files)


# ------------------------------------------------------------------------------- refusals


def flipped_weight_byte(bundle: Path, out: Path) -> Path:
    manifest = manifest_of(bundle)
    weights = next(b for b in manifest["blobs"] if b["role"] == "weights")
    with tarfile.open(bundle) as tar:
        member = tar.getmember(f"blobs/{weights['sha256']}")
        at = member.offset_data + member.size // 2
    raw = bytearray(bundle.read_bytes())
    raw[at] ^= 0xFF
    out.write_bytes(bytes(raw))
    return out


def edited_metrics(bundle: Path, out: Path) -> Path:
    members = members_of(bundle)
    manifest = json.loads(members["manifest.json"])
    manifest["models"][0]["metrics"]["val_chamfer"] = 1e-9  # a better score, not rehashed
    return write_tar(out, {**members, "manifest.json": canonical(manifest)})


def cut_lineage_rehashed(bundle: Path, out: Path) -> Path:
    """Whoever rehashes a manifest still has to keep its records consistent."""
    members = members_of(bundle)
    manifest = json.loads(members["manifest.json"])
    manifest["models"] = manifest["models"][:1]
    manifest["records_sha256"] = records_sha256(manifest)
    return write_tar(out, {**members, "manifest.json": canonical(manifest)})


def cut_in_half(bundle: Path, out: Path) -> Path:
    raw = bundle.read_bytes()
    out.write_bytes(raw[: len(raw) // 2])
    return out


def not_a_tar(bundle: Path, out: Path) -> Path:
    out.write_text("solid 'sword'\nendsolid\n" * 40)
    return out


def dotdot_member(bundle: Path, out: Path) -> Path:
    return write_tar(out, {**members_of(bundle), "blobs/../../evil.pt": b"x"})


@pytest.mark.parametrize("make, reason", [
    (flipped_weight_byte, "does not match its sha256"),
    (edited_metrics, "does not match its records_sha256"),
    (cut_lineage_rehashed, "parent is not the next model"),
    (cut_in_half, ""),
    (not_a_tar, "not a complete tar archive"),
    (dotdot_member, "outside the archive"),
], ids=["flipped-weight-byte", "edited-metrics", "cut-lineage-rehashed", "cut-in-half", "not-a-tar",
        "dotdot-member"])
def test_a_bad_bundle_is_refused_and_nothing_is_written(source: Source, rodin: Rodin, tmp_path: Path,
                                                        make: Callable[[Path, Path], Path], reason: str) -> None:
    bad = make(source.bundle, tmp_path / "bad.rodin")
    assert rodin.json("status")["jobs"] == []  # the registry exists
    before = state(rodin)
    result = rodin.cli("models", "import", str(bad))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"refused {bad}" in result.stderr and "nothing was imported" in result.stderr
    assert reason in result.stderr, result.stderr
    as_json = rodin.cli("models", "import", str(bad), "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"].startswith(f"refused {bad}")
    assert state(rodin) == before


def test_a_missing_file_is_refused(rodin: Rodin, tmp_path: Path) -> None:
    result = rodin.cli("models", "import", str(tmp_path / "nowhere.rodin"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
