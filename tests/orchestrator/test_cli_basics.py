"""The CLI against a real SQLite registry: settings, errors, nothing written on bad input."""

from __future__ import annotations

import sqlite3

from tests.conftest import Rodin


def _count(rodin: Rodin, table: str) -> int:
    with sqlite3.connect(rodin.home / "registry.db") as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_config_show_uses_embedded_defaults(rodin: Rodin) -> None:
    cfg = rodin.json("config", "show")
    assert cfg["database_url"] == f"sqlite:///{rodin.home / 'registry.db'}"
    assert cfg["broker_url"] == "filesystem://"
    assert cfg["artifacts_url"].startswith("file://")
    assert cfg["embedded"] == "true"


def test_status_on_a_fresh_home_creates_the_registry(rodin: Rodin) -> None:
    assert rodin.json("status") == {"jobs": []}
    assert (rodin.home / "registry.db").is_file()


def test_unknown_model_fails_cleanly_and_writes_nothing(rodin: Rodin) -> None:
    result = rodin.cli("reconstruct", "--model", "42")
    assert result.returncode == 2
    assert "model 42 is not registered" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert _count(rodin, "jobs") == 0
    assert not (rodin.home / "worker.pid").exists()  # no worker started for a refused job


def test_unknown_model_in_json_mode_prints_one_error_object(rodin: Rodin) -> None:
    out = rodin.json("reconstruct", "--model", "7", expect_code=2)
    assert "model 7 is not registered" in out["error"]


def test_unknown_dataset_fails_cleanly(rodin: Rodin) -> None:
    result = rodin.cli("submit", "train", "--dataset", "swords@3")
    assert result.returncode == 2
    assert "dataset 'swords@3' is not registered" in result.stderr
    assert "Traceback" not in result.stderr
    assert _count(rodin, "jobs") == 0


def test_unknown_job_and_model_show(rodin: Rodin) -> None:
    assert rodin.cli("status", "99").returncode == 2
    assert rodin.cli("models", "show", "5").returncode == 2
    assert rodin.cli("cancel", "3").returncode == 2


def test_datasets_make_registers_versions(rodin: Rodin) -> None:
    first = rodin.json("datasets", "make", "swords", "--count", "3", "--points-per-shape", "200")
    second = rodin.json("datasets", "make", "swords", "--count", "2", "--seed", "1",
                        "--points-per-shape", "200")
    assert first["dataset"]["ref"] == "swords@1" and first["dataset"]["shapes"] == 3
    assert second["dataset"]["ref"] == "swords@2"
    assert rodin.json("datasets", "show", "swords")["version"] == 2  # bare name: newest
    assert rodin.json("datasets", "show", "swords@1")["shapes"] == 3
    assert [d["ref"] for d in rodin.json("datasets", "list")["datasets"]] == ["swords@2", "swords@1"]


def test_invalid_training_settings_are_refused_before_a_job_exists(rodin: Rodin) -> None:
    rodin.json("datasets", "make", "swords", "--count", "2", "--points-per-shape", "200")
    result = rodin.cli("submit", "train", "--dataset", "swords", "--patches", "50", "--points", "10")
    assert result.returncode == 2
    assert "points (10) must be at least the number of patches (50)" in result.stderr
    assert _count(rodin, "jobs") == 0


def test_unreadable_reconstruction_input_is_refused(rodin: Rodin, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rodin.json("datasets", "make", "swords", "--count", "2", "--points-per-shape", "200")
    bad = tmp_path / "broken.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\n")
    # No model yet either: the model check comes first and names the model.
    result = rodin.cli("reconstruct", "--model", "1", str(bad))
    assert result.returncode == 2 and "model 1" in result.stderr


def test_client_commands_do_not_import_torch(rodin: Rodin) -> None:
    """`rodin status` and friends must start fast on a machine that only submits work."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from orchestrator.cli.main import main\n"
        "sys.argv = ['rodin', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'trimesh', 'celery', 'scipy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    for args in (["status"], ["models", "list"], ["datasets", "list"], ["config", "show"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], env=rodin.env,
                             capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in out.stderr, (args, out.stderr[-500:])


def test_status_watch_without_a_terminal_prints_one_snapshot(rodin: Rodin) -> None:
    result = rodin.cli("status", "--watch")  # CliRunner: no terminal; returns instead of looping
    assert result.returncode == 0 and "No jobs yet" in result.stdout


def test_a_reconstruction_line_says_what_refinement_did() -> None:
    from orchestrator.cli.infer import _refined_how

    assert _refined_how(None) == ""  # not refined, or a job from before these were recorded
    assert _refined_how({"two_sided": True, "thickness_max": 0.0612, "faces_trimmed": 31}) == \
        "; two-sided, up to 0.061 thick; 31 faces trimmed"
    assert _refined_how({"two_sided": False, "faces_trimmed": 0}) == ""
