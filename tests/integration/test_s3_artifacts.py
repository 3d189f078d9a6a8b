"""Artifacts on S3: the content-addressed store against a local S3-compatible server (moto's
server mode), then one tiny train + reconstruct through a real worker with artifacts on S3."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from orchestrator.artifacts import ArtifactError, ArtifactStore
from orchestrator.settings import load_settings
from tests.conftest import Rodin, stop_process

TINY = ["--epochs", "2", "--patches", "4", "--points", "128", "--bottleneck", "32",
        "--hidden", "32", "--layers", "1", "--batch-size", "4", "--checkpoint-every", "1",
        "--val-fraction", "0.25"]


@pytest.fixture
def bucket(s3_server) -> str:  # type: ignore[no-untyped-def]
    name = f"rodin-{secrets.token_hex(4)}"
    s3_server.create_bucket(name)
    return name


def _store(s3_server, url: str) -> ArtifactStore:  # type: ignore[no-untyped-def]
    settings = load_settings({**s3_server.env, "RODIN_ARTIFACTS_URL": url, "RODIN_HOME": "/nonexistent"})
    assert settings.storage_options == {"endpoint_url": s3_server.endpoint_url}
    return ArtifactStore(settings.artifact_root, settings.storage_options)


def test_put_get_and_sha256_check_on_s3(s3_server, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)  # credentials, as botocore reads them
    store = _store(s3_server, f"s3://{bucket}/prefix")
    data = b"weights" * 1000
    blob = store.put_bytes(data, ".pt")
    digest = hashlib.sha256(data).hexdigest()
    assert blob.uri == f"s3://{bucket}/prefix/sha256/{digest[:2]}/{digest}.pt"
    assert (blob.sha256, blob.size) == (digest, len(data))
    assert store.exists(blob.uri)
    assert store.get_bytes(blob.uri, digest) == data
    assert store.put_bytes(data, ".pt") == blob  # content-addressed: stored once
    # A second store (another machine) with the same settings reads the same blob.
    assert _store(s3_server, f"s3://{bucket}/prefix").get_bytes(blob.uri, digest) == data
    # Tampered bytes are refused.
    store.fs.pipe_file(blob.uri, b"tampered")
    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        store.get_bytes(blob.uri, digest)
    with pytest.raises(ArtifactError, match="missing from the store"):
        store.get_bytes(f"s3://{bucket}/prefix/sha256/00/{'0' * 64}.pt", "0" * 64)
    with pytest.raises(ArtifactError, match="is not in the store"):
        store.get_bytes("file:///etc/hostname", digest)
    # Another bucket, or another prefix of the same bucket, is not this store either.
    other = _store(s3_server, f"s3://{bucket}/other").put_bytes(data, ".pt")
    with pytest.raises(ArtifactError, match="is not in the store"):
        store.get_bytes(other.uri, digest)
    # No temporary objects are left behind.
    assert all(".tmp-" not in p for p in store.fs.find(f"{bucket}/prefix"))


def test_train_and_reconstruct_with_artifacts_on_s3(s3_server, bucket: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rodin = Rodin(tmp_path / "home", extra_env={**s3_server.env, "OMP_NUM_THREADS": "1",
                                                 "RODIN_ARTIFACTS_URL": f"s3://{bucket}/rodin"})
    ds = rodin.json("datasets", "make", "swords", "--count", "6", "--points-per-shape", "400")
    assert ds["dataset"]["artifact_uri"].startswith(f"s3://{bucket}/rodin/sha256/")
    worker = rodin.start_worker("s3w")
    try:
        trained = rodin.json("submit", "train", "--dataset", "swords", *TINY, "--wait", timeout=300)
        assert trained["status"] == "succeeded", trained
        model = rodin.json("models", "show", str(trained["model_id"]))
        assert model["artifact_uri"].startswith(f"s3://{bucket}/rodin/sha256/")
        out = rodin.json("reconstruct", "--model", str(trained["model_id"]), "--wait",
                         "--out", str(tmp_path / "rec"), timeout=300)
        assert out["status"] == "succeeded", out
        job = rodin.json("status", str(out["job_id"]))
        assert job["outputs"] and all(o["uri"].startswith("s3://") for o in job["outputs"])
        for o in job["outputs"]:
            local = tmp_path / "rec" / o["name"]
            assert hashlib.sha256(local.read_bytes()).hexdigest() == o["sha256"]
    finally:
        stop_process(worker)
    # Nothing went to the local artifact folder.
    assert not (rodin.home / "artifacts").exists()
