"""The command line's LoRA, scheduler and memory flags: what changes the image lands in the PNG,
how to run does not, and careless values are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from instantstyle.app.cli import main
from instantstyle.core.request import LoraRef, read_png_request
from instantstyle.testing.lora import write_tiny_lora


def generate(tiny, out: Path, *extra: str):
    args = [
        "generate", "--model", str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter), "--style", str(tiny.style_image),
        "--prompt", "a barn", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "--device", "cpu",
        "-o", str(out), *extra,
    ]
    return CliRunner().invoke(main, args)


def test_lora_and_scheduler_are_stored_in_the_png_and_runtime_flags_are_not(tiny, tmp_path: Path) -> None:
    lora = write_tiny_lora(tiny.sdxl, tmp_path / "lora.safetensors")
    out = tmp_path / "out.png"
    result = generate(tiny, out, "--lora", f"{lora}:0.5", "--scheduler", "Euler A", "--low-memory",
                      "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    request = read_png_request(out)
    assert request.lora == (LoraRef(str(lora), 0.5),)
    assert request.scheduler == "euler-a"
    assert "cache" not in request.to_json() and "low_memory" not in request.to_json()
    assert list((tmp_path / "cache").glob("*.safetensors"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora", "missing.safetensors"], "LoRA missing.safetensors: no such file"),
        (["--lora", "x.safetensors:strong"], "is not a number"),
        (["--scheduler", "fastest"], "unknown scheduler 'fastest'"),
        (["--offload", "disk"], "Invalid value for '--offload'"),
    ],
)
def test_careless_flags_are_one_line_errors(tiny, tmp_path: Path, flags: list[str], message: str) -> None:
    result = generate(tiny, tmp_path / "out.png", *flags)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.png").exists()
