"""Batch jobs on a local Ray cluster with two CPU workers: same images as in-process, and a killed worker
costs nothing but time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle.app.batch import LOCK, run_batch
from instantstyle.app.workers import Scoring
from instantstyle.loading.runtime import Runtime

from .conftest import FAST, pixels

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def jobs_over_two_styles(tmp_path: Path, count: int) -> Path:
    for name, seed in (("ink.png", 1), ("oil.png", 2)):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    rows = [{"id": f"job-{i}", "prompt": f"a lighthouse {i}", "style": ["ink.png", "oil.png"][i % 2], **FAST,
             "seed": 100 + i} for i in range(count)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_two_ray_cpu_workers_make_the_same_images_as_a_local_run(local_ray, tiny, sdxl, tmp_path):
    jobs = jobs_over_two_styles(tmp_path, 6)
    models = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    local = run_batch(jobs, tmp_path / "local", pipeline=sdxl, defaults=models)
    runtime = Runtime(cache_dir=str(tmp_path / "cache"))  # reaches the workers: they cache the two styles there
    on_ray = run_batch(jobs, tmp_path / "ray", defaults=models, ray=True, workers=2, runtime=runtime)
    assert local.done == on_ray.done == 6
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert len(on_ray.encoder_runs) == 2 and all(runs <= 2 for runs in on_ray.encoder_runs.values())
    for i in range(6):
        a, b = (pixels(Image.open(tmp_path / run / f"job-{i}.png")) for run in ("local", "ray"))
        assert np.abs(a - b).max() <= 2  # the same seeds; only float rounding differs between thread counts


def test_ray_workers_score_the_images_when_asked(local_ray, tiny, sdxl, tmp_path):
    jobs = jobs_over_two_styles(tmp_path, 2)
    models = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    run_batch(jobs, tmp_path / "local", pipeline=sdxl, defaults=models, scoring=Scoring())
    run_batch(jobs, tmp_path / "ray", defaults=models, ray=True, workers=1, scoring=Scoring())
    scores = {run: {e["id"]: e["scores"][0] for e in map(json.loads, (tmp_path / run / "manifest.jsonl").open())}
              for run in ("local", "ray")}
    assert scores["ray"].keys() == scores["local"].keys() == {"job-0", "job-1"}
    for job, local_scores in scores["local"].items():
        assert scores["ray"][job]["clip_style"] == pytest.approx(local_scores["clip_style"], abs=0.02)


def test_a_ray_worker_killed_during_the_run_still_ends_with_every_job_done(local_ray, tiny, tmp_path):
    jobs, out = jobs_over_two_styles(tmp_path, 8), tmp_path / "out"
    killed: list[int] = []

    def kill_first_worker() -> None:  # the manifest names the worker (host:pid) of every finished job
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            manifest = out / "manifest.jsonl"
            text = manifest.read_text() if manifest.exists() else ""
            if "\n" in text:  # a complete first line
                pid = int(json.loads(text.partition("\n")[0])["worker"].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    report = run_batch(jobs, out, defaults={"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}, ray=True,
                       workers=2)
    killer.join()
    assert killed and (report.done, report.failed) == (8, 0)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in lines) == sorted(f"job-{i}" for i in range(8))
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted([f"job-{i}.png" for i in range(8)] + ["manifest.jsonl", LOCK])


def test_a_worker_is_given_more_batches_of_the_model_it_holds():
    from instantstyle.app.batch import Job
    from instantstyle.app.ray_batch import BatchQueue
    from instantstyle.core.request import Request

    def batch(model: str, n: int) -> list[Job]:
        return [Job(f"{model}-{n}", Request(prompt="p", style=("s.png",), model=model))]

    queue = BatchQueue([batch("a", 1), batch("b", 1), batch("b", 2), batch("a", 2), batch("b", 3)])
    holding_a = ("a", None, None)
    assert [queue.take(holding_a)[0][0].id for _ in range(2)] == ["a-1", "a-2"]
    assert [queue.take(holding_a)[0][0].id for _ in range(3)] == ["b-1", "b-2", "b-3"]  # then the largest model
    assert len(queue) == 0
