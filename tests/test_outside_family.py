"""A family from outside the package (``tests/outside_family.py``) works end to end once registered: through
``register_family`` in the process, or an ``instantstyle.families`` entry point of an installed package (the CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from instantstyle import Request, StylePipeline, families
from instantstyle.families import family_named, family_of, register_family

from . import outside_family
from .conftest import FAST, pixels
from .test_cli import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upcast_model(tiny, tmp_path_factory) -> Path:
    """The tiny SD1.5 with ``upcast_attention`` in its UNet config (its files are links to the tiny model's)."""
    folder = tmp_path_factory.mktemp("upcast") / "sd21"
    shutil.copytree(tiny.sd15, folder, copy_function=os.symlink)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").unlink()
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "upcast_attention": True}))
    return folder


@pytest.fixture
def registered(monkeypatch):
    """``outside_family.FAMILY`` registered for one test (the registry is put back after it)."""
    monkeypatch.setattr(families, "_registered", [])
    return register_family(outside_family.FAMILY)


def test_without_registering_it_the_model_is_sd15s(upcast_model):
    from instantstyle.core.preflight import model_family

    assert model_family(str(upcast_model)).name == "sd15"


def test_a_registered_family_loads_generates_and_lists_its_blocks(registered, upcast_model, sd15, tiny, capsys):
    pipe = StylePipeline.from_pretrained(str(upcast_model), str(tiny.sd15_adapter), device="cpu")
    assert pipe.resources.family is registered and family_of(pipe.pipe).name == "sd21"
    assert family_named("sd21") is registered
    request = Request("a cat", style=str(tiny.style_image), **FAST)
    image = pipe(request).images[0]
    assert (pixels(image) == pixels(sd15(request).images[0])).all()  # SD1.5's family, SD1.5's weights: its pixels
    assert abs(pixels(image) - pixels(pipe(request, scale=0.0).images[0])).mean() > 0.5
    code, out, err = run(capsys, "blocks", "--model", upcast_model)
    assert code == 0, err
    assert out.startswith(f"{upcast_model} (sd21): 16 attention layers take image features; default blocks: style")


def test_a_family_name_is_registered_once(registered):
    from dataclasses import replace

    assert register_family(outside_family.FAMILY) is registered  # again: nothing changes
    with pytest.raises(ValueError, match="a model family named 'sd15' is already known"):
        register_family(replace(outside_family.FAMILY, name="sd15"))
    with pytest.raises(TypeError, match="register_family takes a Family"):
        register_family("sd21")  # type: ignore[arg-type]


def test_two_families_that_match_one_model_and_refine_nothing_are_refused(registered, upcast_model):
    from dataclasses import replace

    from instantstyle.core.preflight import model_family

    register_family(replace(outside_family.FAMILY, name="sd21-twin", refines=None))
    with pytest.raises(RuntimeError, match="families overlap: sd21, sd21-twin all match"):
        model_family(str(upcast_model))


def test_the_cli_finds_a_family_an_installed_package_names_in_its_entry_points(upcast_model, tmp_path):
    site = tmp_path / "site"
    info = site / "outside_family-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[instantstyle.families]\nsd21 = tests.outside_family:FAMILY\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    blocks = subprocess.run([sys.executable, "-m", "instantstyle", "blocks", "--model", str(upcast_model)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert blocks.returncode == 0, blocks.stderr
    assert blocks.stdout.startswith(f"{upcast_model} (sd21): 16 attention layers")


def test_an_installed_family_that_does_not_load_is_one_line_exit_2(upcast_model, tmp_path):
    site = tmp_path / "site"
    info = site / "broken_family-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[instantstyle.families]\nbroken = no_such_module:FAMILY\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    blocks = subprocess.run([sys.executable, "-m", "instantstyle", "blocks", "--model", str(upcast_model)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert blocks.returncode == 2
    assert blocks.stderr.strip() == ("error: model family 'broken' (no_such_module:FAMILY) of an installed package "
                                     "does not load: ModuleNotFoundError: No module named 'no_such_module'")
