"""``instantstyle demo``: every fixture built into one folder, each mode's exact command printed, and run."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from PIL import Image

from instantstyle.app import demo
from instantstyle.core.request import PNG_KEY
from instantstyle.testing.trees import MARKER

from .test_cli import run


def printed_commands(out: str) -> dict[str, list[str]]:
    """The command lines ``demo`` printed, by the file they write (``score``: by its command)."""
    found = {}
    for line in out.splitlines():
        if line.startswith("instantstyle "):
            argv = shlex.split(line)
            found[argv[argv.index("-o") + 1] if "-o" in argv else argv[1]] = argv
    return found


def test_demo_builds_every_fixture_and_prints_each_modes_command(capsys, demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    code, out, err = run(capsys, "demo", "demo")
    assert code == 0, err
    assert all((demo_root / "demo" / fixture.name / MARKER).is_file() for fixture in demo.FIXTURES)
    commands = printed_commands(out)
    assert sorted(commands) == sorted(f"demo/out/{m.name}.png" if m.writes_image else "score" for m in demo.MODES)
    assert "random-weight" in out.lower() and "instantstyle demo demo --run" in out


def test_demo_run_makes_an_image_per_mode_with_its_request_and_a_sheet(capsys, demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    code, out, err = run(capsys, "demo", "demo", "--run", "--only", "sd15,flux")
    assert code == 0, err
    for name in ("sd15", "flux"):
        with Image.open(demo_root / "demo" / "out" / f"{name}.png") as image:
            assert image.size == (demo.SIZE, demo.SIZE) and PNG_KEY in image.info
    assert (demo_root / "demo" / "out" / "sheet.png").is_file() and "2 of 2 modes ran" in out


def test_a_printed_command_alone_makes_the_demo_runs_pixels(capsys, demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    assert run(capsys, "demo", "demo", "--run", "--only", "sd3")[0] == 0
    argv = printed_commands(run(capsys, "demo", "demo")[1])["demo/out/sd3.png"]
    argv[argv.index("-o") + 1] = "alone.png"
    assert run(capsys, *argv[1:])[0] == 0
    made, alone = (np.asarray(Image.open(demo_root / p)) for p in ("demo/out/sd3.png", "alone.png"))
    assert np.array_equal(made, alone)


@pytest.mark.parametrize("sub, message", [("tiny", "is not a demo fixture tree"), ("out", "is not a demo folder")])
def test_demo_does_not_write_into_a_folder_that_is_not_its_own(capsys, tmp_path, sub, message):
    (tmp_path / sub).mkdir()
    (tmp_path / sub / "mine.png").write_text("mine")
    code, _, err = run(capsys, "demo", tmp_path)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert (tmp_path / sub / "mine.png").read_text() == "mine" and not (tmp_path / "modes").exists()


def test_demo_into_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = run(capsys, "demo", tmp_path / "f")
    assert code == 2 and err == f"error: demo folder {tmp_path / 'f'}: is a file\n"


def test_an_unknown_demo_mode_gets_did_you_mean(capsys, tmp_path):
    code, _, err = run(capsys, "demo", tmp_path, "--only", "fluxx")
    assert code == 2 and "unknown demo mode 'fluxx' (did you mean 'flux'?)" in err, err
