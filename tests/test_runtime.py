"""How to run: one Runtime for every surface; refused when it makes no sense, honoured by batch workers."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from instantstyle import Request, UserError
from instantstyle.app.cli import main
from instantstyle.app.workers import Job, Worker
from instantstyle.loading.memory import is_released
from instantstyle.loading.runtime import Runtime, resolve_dtype
from instantstyle.testing import make_style_image

from .conftest import FAST


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"dtype": "float8"}, "unknown dtype 'float8'"),
        ({"offload": "disk"}, "unknown offload mode 'disk'"),
        ({"compile_backend": "tvm"}, "unknown compile backend 'tvm'"),
        ({"device_map": "auto"}, "unknown device map 'auto'"),
        ({"device_map": "balanced", "offload": "model"}, "choose one"),
    ],
)
def test_a_runtime_that_makes_no_sense_is_one_line_before_anything_loads(fields, message):
    with pytest.raises(UserError, match=message):
        Runtime(**fields)


def test_dtype_defaults_to_float32_on_cpu_and_float16_on_gpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_a_batch_worker_loads_with_every_runtime_option(tiny, tmp_path):
    """Offload, low memory, compile and the embedding cache all take effect in the pipeline a worker loads
    (the same Runtime object goes to Ray actors)."""
    torch._dynamo.reset()
    runtime = Runtime(device="cpu", offload="model", low_memory=True, compile_backend="eager",
                      cache_dir=str(tmp_path / "cache"))
    style = make_style_image(tmp_path / "style.png", seed=201)
    request = Request("a kite", style=str(style), model=str(tiny.sdxl), adapter=str(tiny.sdxl_adapter), **FAST)
    worker = Worker(runtime)
    try:
        [outcome] = worker.run([Job("kite", request)]).outcomes
    finally:
        worker.close()
    pipe = worker.pipeline
    assert outcome.error is None and len(outcome.images) == 1
    assert pipe.resources.runtime == runtime
    assert hasattr(pipe.resources.denoiser, "_hf_hook")  # accelerate's model offload
    assert pipe.resources.denoiser._compiled_call_impl is not None  # torch.compile'd in place
    assert pipe.resources.low_memory and is_released(pipe.resources.image_encoder)  # encoder freed after its one encode
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_the_batch_command_passes_its_runtime_flags_to_the_workers(tiny, tmp_path):
    style = make_style_image(tmp_path / "style.png", seed=202)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"id": "a", "prompt": "a cat", "style": str(style), **FAST}) + "\n")
    result = CliRunner().invoke(main, [
        "batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "out"), "-q", "--device", "cpu", "--model",
        str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter), "--low-memory", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.png").is_file() and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_the_batch_command_refuses_runtime_flags_that_contradict_each_other(tiny, tmp_path):
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"prompt": "a cat", "style": str(tiny.style_image)}) + "\n")
    result = CliRunner().invoke(main, ["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "out"),
                                       "--device-map", "balanced", "--offload", "model"])
    assert result.exit_code == 2
    assert result.output == "error: --device-map and --offload both decide where the model lives; choose one\n"
    assert not (tmp_path / "out").exists()
