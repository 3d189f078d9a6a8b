"""`rodin datasets show --plots DIR` (thumbnails and sizes as PNGs, without torch) and the
files `rodin datasets add` skips, named relative to the folder given."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, Rodin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CUBE_OBJ = (
    "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\nv 1 1 1\nv 0 1 1\n"
    "f 1 4 3\nf 1 3 2\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\n"
    "f 2 3 7\nf 2 7 6\nf 3 4 8\nf 3 8 7\nf 4 1 5\nf 4 5 8\n"
)
POINTS_ONLY_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"


def _decoded_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def _swords(rodin: Rodin, count: int = 6) -> None:
    rodin.json("datasets", "make", "swords", "--count", str(count), "--points-per-shape", "200")


# --------------------------------------------------------------------------------------------
# Plots


def test_show_plots_writes_two_pngs(rodin: Rodin, tmp_path: Path) -> None:
    _swords(rodin)
    folder = tmp_path / "plots" / "new"  # created, parents too
    result = rodin.cli("datasets", "show", "swords", "--plots", str(folder))
    assert result.returncode == 0, result.stderr
    shapes, sizes = folder / "swords-v1-shapes.png", folder / "swords-v1-sizes.png"
    assert sorted(folder.iterdir()) == sorted([shapes, sizes])
    for path in (shapes, sizes):
        width, height = _decoded_size(path)
        assert width > 100 and height > 100
        assert str(path) in "".join(result.stderr.split())  # each path printed (rich may wrap)
    assert "swords@1" in result.stdout  # the summary is still shown


def test_show_plots_in_json_mode_names_the_files(rodin: Rodin, tmp_path: Path) -> None:
    _swords(rodin)
    out = rodin.json("datasets", "show", "swords@1", "--plots", str(tmp_path / "p"))
    assert out["ref"] == "swords@1" and out["shapes"] == 6
    assert set(out["plots"]) == {"shapes", "sizes"}
    for path in out["plots"].values():
        assert Path(path).parent == tmp_path / "p"
        assert _decoded_size(Path(path))[0] > 0
    assert "plots" not in rodin.json("datasets", "show", "swords")  # only when asked for


def test_plots_into_a_file_is_refused(rodin: Rodin, tmp_path: Path) -> None:
    _swords(rodin, 2)
    (tmp_path / "taken").write_text("")
    result = rodin.cli("datasets", "show", "swords", "--plots", str(tmp_path / "taken"))
    assert result.returncode == 2
    assert "is a file" in result.stderr and "Traceback" not in result.stderr


def test_renders_need_no_torch() -> None:
    code = ("import sys, numpy as np\n"
            "from atlas_core.data import PointCloudSet\n"
            "from atlas_core.render import render_shape_sheet, render_size_histogram\n"
            "p = np.random.default_rng(0).normal(size=(3, 50, 3))\n"
            "render_shape_sheet(p / 4, ['a', 'b', 'c']); render_size_histogram(np.ones(3))\n"
            "print(json.dumps(sorted(m for m in ('torch', 'atlas_core.meshing') if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_the_sheet_caps_thumbnails_and_shortens_names() -> None:
    from atlas_core.render import _shorten, render_shape_sheet, render_size_histogram

    assert _shorten("short", 20) == "short"
    long = "a_rather_long_mesh_file_name-3f9a2c"
    short = _shorten(long, 21)
    assert len(short) == 21 and short.startswith("a_rather") and short.endswith("3f9a2c")
    assert _shorten("tab\there", 20) == "tab?here"

    rng = np.random.default_rng(1)
    points = rng.normal(size=(12, 30, 3)) / 4
    capped = render_shape_sheet(points, [f"s{i}$x$" for i in range(12)], "t", max_shapes=4)
    full = render_shape_sheet(points, [f"s{i}" for i in range(12)], "t")
    assert capped.startswith(PNG_SIGNATURE) and full.startswith(PNG_SIGNATURE)
    assert len(capped) < len(full)  # 4 thumbnails drawn, not 12
    # Sizes over four decades (log axis), and all equal (a degenerate range).
    assert render_size_histogram(np.geomspace(0.01, 100, 50)).startswith(PNG_SIGNATURE)
    assert render_size_histogram(np.full(5, 0.5)).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        render_shape_sheet(points, ["one name"], "t")


# --------------------------------------------------------------------------------------------
# Skipped files, relative to the folder given


def test_skipped_files_are_named_relative_to_the_folder(rodin: Rodin, tmp_path: Path) -> None:
    folder = tmp_path / "a-long-folder-name-that-would-crowd-the-table" / "meshes"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "good.obj").write_text(CUBE_OBJ)
    (folder / "sub" / "broken.obj").write_text(POINTS_ONLY_OBJ)

    result = rodin.cli("datasets", "add", "mine", str(folder), "--points-per-shape", "200")
    assert result.returncode == 0, result.stderr
    table = result.stderr.split("Registered")[0]
    assert "sub/broken.obj" in table and str(tmp_path) not in "".join(table.split())
    assert all(len(line) <= 80 for line in result.stderr.splitlines())

    shown = rodin.json("datasets", "show", "mine")
    assert [row["file"] for row in shown["skipped"]] == ["sub/broken.obj"]
    assert shown["source"] == str(folder.resolve())  # where the relative names start

    out = rodin.json("datasets", "add", "mine", str(folder), "--points-per-shape", "200")
    assert [row["file"] for row in out["skipped"]] == ["sub/broken.obj"]
    assert "points" in out["skipped"][0]["reason"]


def test_a_single_broken_file_is_named_by_its_name(rodin: Rodin, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "broken.obj").write_text(POINTS_ONLY_OBJ)
    out = rodin.json("datasets", "add", "one", str(tmp_path / "x" / "broken.obj"), expect_code=2)
    assert [row["file"] for row in out["skipped"]] == ["broken.obj"]


def test_no_usable_file_exits_2_with_every_skip_in_the_json_error(rodin: Rodin, tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "top.obj").write_text(POINTS_ONLY_OBJ)
    (folder / "a" / "empty.stl").write_bytes(b"")
    (folder / "a" / "b" / "noheader.off").write_text("3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")

    out = rodin.json("datasets", "add", "broken", str(folder), expect_code=2)
    assert "none of the 3 files" in out["error"]
    reasons = {row["file"]: row["reason"] for row in out["skipped"]}
    assert set(reasons) == {"top.obj", "a/empty.stl", "a/b/noheader.off"}
    assert all(reasons.values())

    result = rodin.cli("datasets", "add", "broken", str(folder))
    assert result.returncode == 2
    assert "a/b/noheader.off" in result.stderr and "Traceback" not in result.stderr
    assert rodin.json("datasets", "list") == {"datasets": []}
