"""Batch jobs: job files in, images and a manifest out; resume after a crash; bad lines skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from instantstyle.app.batch import LOCK, Manifest, read_jobs, run_batch
from instantstyle.app.cli import main
from instantstyle.app.workers import Scoring
from instantstyle.core.request import Request, read_png_request
from instantstyle.errors import UserError
from instantstyle.scores.preset_file import write_presets
from instantstyle.scores.scorer import SCORE_KEYS, read_png_scores
from instantstyle.scores.scorers import Scorers

from .conftest import FAST, pixels, style_embeds

SRC = Path(__file__).resolve().parents[1] / "src"


def new_style(path: Path) -> str:
    """A style image no earlier test has encoded (random pixels), so encoder counts start at zero."""
    rng = np.random.default_rng()
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cat_jobs(tmp_path: Path, count: int = 12) -> Path:
    """``count`` jobs over two styles (relative paths, as a user writes them)."""
    new_style(tmp_path / "ink.png")
    new_style(tmp_path / "oil.png")
    rows = [{"id": f"cat-{i}", "prompt": f"a cat, pose {i}", "style": ["ink.png", "oil.png"][i % 2], **FAST, "seed": i}
            for i in range(count)]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def manifest_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_a_dozen_jobs_make_every_image_and_a_valid_manifest(sdxl, tmp_path):
    out = tmp_path / "out"
    report = run_batch(cat_jobs(tmp_path), out, pipeline=sdxl, batch_size=4)
    assert (report.done, report.failed, report.images) == (12, 0, 12)
    lines = manifest_lines(out)
    assert sorted(e["id"] for e in lines) == sorted(f"cat-{i}" for i in range(12))
    for entry in lines:
        assert entry["status"] == "done" and entry["outputs"] == [entry["id"] + ".png"]
        assert read_png_request(out / entry["outputs"][0]) == Request.from_dict(entry["request"])
        assert entry["seed"] == int(entry["id"].split("-")[1]) and entry["timings"]["batch_s"] > 0
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted([f"cat-{i}.png" for i in range(12)] + ["manifest.jsonl", LOCK])  # no temporary files


def test_the_style_encoder_runs_once_per_style_per_worker(sdxl, tmp_path):
    calls = []
    hook = sdxl.resources.image_encoder.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        report = run_batch(cat_jobs(tmp_path, 4), tmp_path / "out", pipeline=sdxl)
    finally:
        hook.remove()
    assert len(calls) == 2
    assert list(report.encoder_runs.values()) == [2]


def test_jobs_sharing_settings_are_batched_into_one_call_with_the_images_of_single_runs(sdxl, tmp_path):
    style = new_style(tmp_path / "s.png")
    rows = [{"id": f"j{i}", "prompt": f"a house {i}", "style": style, **FAST, "seed": 10 + i} for i in range(3)]
    calls = []
    hook = sdxl.pipe.unet.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        run_batch(write_jsonl(tmp_path / "jobs.jsonl", rows), tmp_path / "out", pipeline=sdxl, batch_size=4)
    finally:
        hook.remove()
    assert calls == [6] * FAST["steps"]  # three jobs, CFG doubles the batch, one call per step
    for i, row in enumerate(rows):
        alone = sdxl(prompt=row["prompt"], style=(style,), **{**FAST, "seed": row["seed"]}).images[0]
        assert np.abs(pixels(Image.open(tmp_path / "out" / f"j{i}.png")) - pixels(alone)).max() <= 2


def test_rerun_skips_done_jobs_and_redoes_only_missing_images(sdxl, tmp_path):
    jobs, out = cat_jobs(tmp_path, 3), tmp_path / "out"
    run_batch(jobs, out, pipeline=sdxl)
    (out / "cat-1.png").unlink()
    report = run_batch(jobs, out, pipeline=sdxl)
    assert (report.done, report.skipped) == (1, 2)
    assert len(manifest_lines(out)) == 3 and (out / "cat-1.png").is_file()


def test_a_process_killed_midway_resumes_with_every_job_done_exactly_once(tiny, sdxl, tmp_path):
    jobs, out = cat_jobs(tmp_path, 8), tmp_path / "out"
    models = ["--model", str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "instantstyle", "batch", str(jobs), "-o", str(out), "-q", "--device", "cpu",
               *models]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "manifest.jsonl").exists() and len((out / "manifest.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = len(manifest_lines(out))
    assert 2 <= before < 8

    defaults = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    report = run_batch(jobs, out, pipeline=sdxl, defaults=defaults)
    assert report.skipped >= before and report.skipped + report.done == 8
    lines = manifest_lines(out)
    assert sorted(e["id"] for e in lines) == sorted(f"cat-{i}" for i in range(8))
    assert all(e["status"] == "done" for e in lines)
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted([f"cat-{i}.png" for i in range(8)] + ["manifest.jsonl", LOCK])


def test_bad_lines_are_reported_with_line_numbers_and_the_rest_run(sdxl, tmp_path):
    style = new_style(tmp_path / "s.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"id": "good", "prompt": "a boat", "style": style, **FAST}) + "\n"
        + "{not json\n"
        + json.dumps({"prompt": "a boat", "style": style, "colour": "red"}) + "\n"
        + json.dumps({"prompt": "a boat", "style": "missing.png"}) + "\n"
        + json.dumps({"id": "../../escape", "prompt": "a boat", "style": style}) + "\n"
    )
    reported: list[str] = []
    report = run_batch(jobs, tmp_path / "out", pipeline=sdxl, on_problem=reported.append)
    assert reported == [
        "jobs.jsonl line 2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "jobs.jsonl line 3: unknown option(s): colour",
        "jobs.jsonl line 4: style image missing.png: no such file",
        "jobs.jsonl line 5: id '../../escape' must be 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
        "or '-' (it names the output file)",
    ]
    assert (report.done, len(report.problems)) == (1, 4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["good.png", "manifest.jsonl", LOCK])


def test_the_command_exits_2_and_runs_nothing_with_strict_when_a_line_is_bad(tiny, tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a", "style": str(tiny.style_image)}, {"prompt": "b"}])
    result = CliRunner().invoke(main, ["batch", str(jobs), "-o", str(tmp_path / "out"), "--strict"])
    assert result.exit_code == 2
    assert result.output == ("skipped: jobs.jsonl line 2: a style reference is required (--style IMAGE)\n"
                             "error: 1 bad job line(s); nothing was run (--strict)\n")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_output_names_cannot_escape_the_output_folder(tiny, tmp_path):
    style = str(tiny.style_image)
    ids = ["../up", "/abs", "a/b", ".hidden", "C:\\x", "ok"]
    jobs = read_jobs(write_jsonl(tmp_path / "jobs.jsonl", [{"id": i, "prompt": "p", "style": style} for i in ids]))
    assert [j.id for j in jobs.jobs] == ["ok"]
    assert len(jobs.problems) == 5


def test_csv_and_matrix_files_make_the_same_requests_as_json_lines(tiny, tmp_path):
    style = str(tiny.style_image)
    write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"s1-p{p}-{s}", "prompt": prompt, "style": style, "seed": s,
                                            "steps": 3} for p, prompt in ((1, "a cat"), (2, "a dog")) for s in (5, 6)])
    rows = [f"s1-p{p}-{s},{prompt},{style},{s},3" for p, prompt in ((1, "a cat"), (2, "a dog")) for s in (5, 6)]
    (tmp_path / "jobs.csv").write_text("id,prompt,style,seed,steps\n" + "\n".join(rows) + "\n")
    (tmp_path / "matrix.json").write_text(json.dumps({"styles": [style], "prompts": ["a cat", "a dog"],
                                                      "seeds": [5, 6], "steps": 3}))
    made = [sorted((j.id, j.request) for j in read_jobs(tmp_path / name).jobs)
            for name in ("jobs.jsonl", "jobs.csv", "matrix.json")]
    assert made[0] == made[1] == made[2] and len(made[0]) == 4


def test_failed_jobs_are_rerun_only_with_retry_failed(sdxl, tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": "fine", "prompt": "a", "style": str(new_style(tmp_path / "s.png")), **FAST},
        {"id": "broken", "prompt": "a", "style": str(tmp_path / "s.png"), "blocks": "down_blocks.9", **FAST},
    ])
    first = run_batch(jobs, tmp_path / "out", pipeline=sdxl)
    assert (first.done, first.failed) == (1, 1) and "matches no attention layer" in first.errors[0]
    again = run_batch(jobs, tmp_path / "out", pipeline=sdxl)
    assert (again.done, again.failed, again.failed_before, again.skipped) == (0, 0, 1, 1)
    retried = run_batch(jobs, tmp_path / "out", pipeline=sdxl, retry_failed=True)
    assert retried.failed == 1 and len(manifest_lines(tmp_path / "out")) == 2


def test_a_torn_last_manifest_line_is_cut_off_on_open(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "status": "done"}\n{"id": "b", "sta')
    manifest = Manifest(tmp_path)
    assert list(manifest.entries) == ["a"]
    assert (tmp_path / "manifest.jsonl").read_text() == '{"id": "a", "status": "done"}\n'


def test_an_output_folder_in_use_by_another_run_is_refused(sdxl, tmp_path):
    from instantstyle.app.batch import _Lock

    (tmp_path / "out").mkdir()
    lock = _Lock(tmp_path / "out")
    try:
        with pytest.raises(UserError, match="in use by another batch run"):
            run_batch(cat_jobs(tmp_path, 1), tmp_path / "out", pipeline=sdxl)
    finally:
        lock.release()


def test_device_map_without_gpus_is_one_clear_error_before_anything_runs(tiny, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the machine without GPUs, wherever this runs
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a", "style": str(tiny.style_image)}])
    result = CliRunner().invoke(main, ["batch", str(jobs), "-o", str(tmp_path / "out"), "--device-map", "balanced"])
    assert result.exit_code == 2
    assert result.output == "error: --device-map balanced spreads a model over CUDA GPUs, and none is available\n"


def test_an_unreachable_ray_address_is_one_clear_error(tiny, tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a", "style": str(tiny.style_image)}])
    result = CliRunner().invoke(main, ["batch", str(jobs), "-o", str(tmp_path / "out"), "--ray", "127.0.0.1:1", "-q"])
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot reach the Ray cluster at 127.0.0.1:1")


def test_csv_cells_are_typed_and_a_bad_cell_names_its_line(tiny, tmp_path):
    style = str(tiny.style_image)
    (tmp_path / "jobs.csv").write_text(f"prompt,style,steps,scale\na cat,{style};{style}:0.5,4,0.8\n"
                                       f"a dog,{style},four,\n")
    jobs = read_jobs(tmp_path / "jobs.csv")
    [job] = jobs.jobs
    assert (job.request.steps, job.request.scale, [r.weight for r in job.request.style]) == (4, 0.8, [1.0, 0.5])
    assert jobs.problems == ["jobs.csv line 3: steps must be a whole number, got 'four'"]


DEEP = "[" * 100_000 + "]" * 100_000  # 100k levels of nesting: json.loads alone raises RecursionError


def test_a_deeply_nested_job_line_is_skipped_with_its_line_number(tiny, tmp_path):
    style = str(tiny.style_image)
    good = json.dumps({"id": "a", "prompt": "a cat", "style": style})
    (tmp_path / "jobs.jsonl").write_text(f"{good}\n{DEEP}\n{good.replace('a cat', 'a dog').replace('a', 'b', 1)}\n")
    jobs = read_jobs(tmp_path / "jobs.jsonl")
    assert [j.id for j in jobs.jobs] == ["a", "b"]
    assert len(jobs.problems) == 1 and jobs.problems[0].startswith("jobs.jsonl line 2: JSON nested more than")


def test_a_deeply_nested_matrix_spec_is_a_user_error(tmp_path):
    (tmp_path / "matrix.json").write_text('{"styles": ' + DEEP + "}")
    with pytest.raises(UserError, match="matrix.json: JSON nested more than"):
        read_jobs(tmp_path / "matrix.json")
    (tmp_path / "jobs").write_text('{"styles": ' + DEEP + "}")  # no extension: not one document, so lines
    assert read_jobs(tmp_path / "jobs").problems == ["jobs line 1: JSON nested more than 32 levels deep"]


def test_a_deeply_nested_manifest_line_is_dropped_with_a_warning(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "status": "done"}\n' + DEEP + "\n")
    manifest = Manifest(tmp_path)
    assert list(manifest.entries) == ["a"] and manifest.warnings[0].endswith("line 2: not a manifest entry; dropped")


def test_job_lines_split_on_newline_only(tiny, tmp_path):
    prompt = "a cat\u2028on a mat\u0085by a door\x0bin the\x0cmorning"  # all line breaks to str.splitlines
    line = json.dumps({"id": "a", "prompt": prompt, "style": str(tiny.style_image)}, ensure_ascii=False)
    (tmp_path / "jobs.jsonl").write_text(line.replace("\\u000b", "\x0b").replace("\\f", "\x0c") + "\n")
    jobs = read_jobs(tmp_path / "jobs.jsonl")
    assert jobs.problems == [] and [j.request.prompt for j in jobs.jobs] == [prompt]


def test_a_byte_that_is_not_utf8_rejects_only_its_line(tiny, tmp_path):
    style = str(tiny.style_image)
    lines = [json.dumps({"id": i, "prompt": "a cat", "style": style}).encode() for i in ("a", "b", "c")]
    lines[1] = lines[1].replace(b"a cat", b"a \xff cat")
    (tmp_path / "jobs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "jobs.csv").write_bytes(b"id,prompt,style\n" + b"".join(f"{i},a cat,{style}\n".encode() for i in "ab")
                                        + b"c,a \xff cat," + style.encode() + b"\n")
    jsonl, csv = read_jobs(tmp_path / "jobs.jsonl"), read_jobs(tmp_path / "jobs.csv")
    assert [j.id for j in jsonl.jobs] == ["a", "c"] and jsonl.problems == ["jobs.jsonl line 2: not UTF-8 text"]
    assert [j.id for j in csv.jobs] == ["a", "b"] and csv.problems == ["jobs.csv line 4: not UTF-8 text"]


def test_a_manifest_line_that_is_not_utf8_is_dropped_alone(tmp_path):
    (tmp_path / "manifest.jsonl").write_bytes(b'{"id": "a", "status": "done"}\n{"id": "b", "note": "\xff"}\n'
                                              + '{"id": "c", "note": "x\u2028y"}\n'.encode())
    manifest = Manifest(tmp_path)
    assert list(manifest.entries) == ["a", "c"] and manifest.entries["c"]["note"] == "x\u2028y"
    assert manifest.warnings == [f"{tmp_path / 'manifest.jsonl'} line 2: not UTF-8 text; dropped"]


def test_a_csv_row_the_csv_reader_refuses_is_skipped_with_its_line_number(tiny, tmp_path):
    style = str(tiny.style_image)
    rows = f"a,a\rcat,{style}\nb,{'x' * 200_000},{style}\nc,a cat,{style}\n"  # a bare CR; a cell over 128 KiB
    (tmp_path / "jobs.csv").write_text("id,prompt,style\n" + rows, newline="")
    jobs = read_jobs(tmp_path / "jobs.csv")
    assert [j.id for j in jobs.jobs] == ["c"]
    assert [p.partition(": ")[0] for p in jobs.problems] == ["jobs.csv line 2", "jobs.csv line 3"]
    assert all("not a CSV row" in p for p in jobs.problems)


def test_a_rerun_with_nothing_to_do_writes_nothing_and_shows_no_progress_bar(sdxl, tmp_path, capsys):
    jobs, out = cat_jobs(tmp_path, 2), tmp_path / "out"
    run_batch(jobs, out, pipeline=sdxl)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    report = run_batch(jobs, out, pipeline=sdxl, progress=True)
    assert report.skipped == 2 and capsys.readouterr().err == ""
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_a_ray_rerun_with_nothing_to_do_starts_no_ray_and_prints_nothing(sdxl, tiny, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    jobs, out = cat_jobs(tmp_path, 2), tmp_path / "out"
    models = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    run_batch(jobs, out, pipeline=sdxl, defaults=models)
    capsys.readouterr()
    report = run_batch(jobs, out, defaults=models, ray=True, progress=True)
    assert report.skipped == 2 and not ray.is_initialized() and capsys.readouterr().err == ""


def test_stale_temporary_files_of_every_kind_are_removed_on_start(sdxl, tmp_path):
    jobs, out = cat_jobs(tmp_path, 1), tmp_path / "out"
    out.mkdir()
    stale = [".manifest.jsonl.4242.tmp", ".cat-0.png.4242.tmp", ".cat-9.png.17.tmp"]
    for name in stale:
        (out / name).write_bytes(b"half written")
    run_batch(jobs, out, pipeline=sdxl)
    assert not any((out / name).exists() for name in stale)


LOCKING = "import sys, pathlib; from instantstyle.app.batch import _Lock; lock = _Lock(pathlib.Path(sys.argv[1])); "
HOLD_LOCK = LOCKING + "print('held', flush=True); sys.stdin.read(); lock.release()"
TRY_LOCK = LOCKING + "print('held')"


def test_two_processes_never_both_hold_the_batch_lock(tmp_path):
    """A run that opened the lock file just before another run released it must still exclude a third run."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None and first.stdout.readline() == "held\n"
    with open(out / LOCK, "a+") as second:  # a second run has opened the lock file, not yet locked it
        first.communicate("")  # the first run finishes and releases
        fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the second run now holds the lock
        third = subprocess.run([sys.executable, "-c", TRY_LOCK, str(out)], env=env, capture_output=True, text=True)
        assert third.returncode != 0 and "in use by another batch run" in third.stderr
    after = subprocess.run([sys.executable, "-c", TRY_LOCK, str(out)], env=env, capture_output=True, text=True)
    assert after.stdout == "held\n"


def test_jobs_whose_images_come_out_nan_fail_and_write_no_image(sdxl, tiny, tmp_path):
    from instantstyle.core.embeddings import StyleFile, save_style

    request = Request("a cat", style=str(tiny.style_image), **FAST)
    style, negative = style_embeds(sdxl, request)
    huge = save_style(tmp_path / "huge.safetensors",
                      StyleFile(style.clone().fill_(1e30), negative, "global",
                                sdxl.resources.image_encoder.identity, {}))
    jobs = [{"id": f"nan{i}", "prompt": f"a cat {i}", "style": str(huge), **FAST} for i in range(2)]
    report = run_batch(jobs, tmp_path / "out", pipeline=sdxl, batch_size=2)  # one shared call, then one by one
    assert report.failed == 2 and all("NaN" in e for e in report.errors)
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_batch_after_a_scheduler_and_lora_job_equals_generate(sdxl, tiny, tmp_path):
    """A job with its own scheduler and LoRA leaves nothing behind: the shared batch that runs next on the same
    pipeline is the model's own scheduler without the LoRA, as ``generate`` of each of its jobs is."""
    from instantstyle.testing.lora import write_tiny_lora

    pipe = sdxl
    style = new_style(tmp_path / "s.png")
    lora = write_tiny_lora(tiny.sdxl, tmp_path / "lora.safetensors")
    fast = {"id": "fast", "prompt": "a barn", "style": style, **FAST, "scheduler": "lcm", "lora": [str(lora)],
            "guidance": 1.0}
    pair = [{"id": f"plain-{i}", "prompt": f"a house {i}", "style": style, **FAST, "seed": 20 + i} for i in range(2)]
    run_batch(write_jsonl(tmp_path / "first.jsonl", [fast]), tmp_path / "out", pipeline=pipe)
    calls = []
    hook = pipe.pipe.unet.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        report = run_batch(write_jsonl(tmp_path / "then.jsonl", pair), tmp_path / "out", pipeline=pipe, batch_size=2)
    finally:
        hook.remove()
    assert report.done == 2 and calls == [4] * FAST["steps"]  # the pair shared one call per step (CFG doubles it)
    for row in [fast, *pair]:
        alone = pipe(Request.from_dict({k: v for k, v in row.items() if k != "id"})).images[0]
        assert np.abs(pixels(Image.open(tmp_path / "out" / f"{row['id']}.png")) - pixels(alone)).max() <= 2, row["id"]


def test_batch_score_puts_the_scores_of_each_output_in_its_manifest_line_and_png(sdxl, tmp_path):
    style = new_style(tmp_path / "s.png")
    rows = [{"id": "one", "prompt": "a house", "style": style, "content_prompt": "noise", **FAST},
            {"id": "two", "prompt": "a boat", "style": style, "num_images": 2, **FAST}]
    out = tmp_path / "out"
    report = run_batch(write_jsonl(tmp_path / "jobs.jsonl", rows), out, pipeline=sdxl, scoring=Scoring())
    assert report.done == 2 and not report.errors
    for entry in manifest_lines(out):
        assert len(entry["scores"]) == len(entry["outputs"])
        expected = Scorers(sdxl).score(sdxl(Request.from_dict(entry["request"])))
        for name, scores, want in zip(entry["outputs"], entry["scores"], expected, strict=True):
            assert set(scores) == set(SCORE_KEYS)
            assert [scores[k] for k in SCORE_KEYS[:3]] == pytest.approx([want.get(k) for k in SCORE_KEYS[:3]],
                                                                       abs=1e-4)
            assert read_png_scores(out / name).to_dict() == scores
    assert [e["scores"][0]["content_leak"] is None for e in manifest_lines(out)] == [False, True]


def test_batch_without_score_writes_no_scores(sdxl, tmp_path):
    run_batch(cat_jobs(tmp_path, 1), tmp_path / "out", pipeline=sdxl)
    assert "scores" not in manifest_lines(tmp_path / "out")[0]


def test_batch_command_score_flag_scores_with_csd(tiny, tmp_path):
    from instantstyle.testing.csd import build_csd_checkpoint

    jobs = cat_jobs(tmp_path, 1)
    csd = build_csd_checkpoint(tmp_path / "csd.safetensors", "safetensors")
    result = CliRunner().invoke(main, ["batch", str(jobs), "-o", str(tmp_path / "out"), "--model", str(tiny.sdxl),
                                       "--adapter", str(tiny.sdxl_adapter), "--device", "cpu", "-q", "--csd", str(csd)])
    assert result.exit_code == 0, result.output
    scores = manifest_lines(tmp_path / "out")[0]["scores"][0]
    assert scores["csd_style"] is not None and scores["clip_style"] is not None


def test_batch_command_with_a_missing_csd_is_one_line_and_runs_nothing(tiny, tmp_path):
    result = CliRunner().invoke(main, ["batch", str(cat_jobs(tmp_path, 1)), "-o", str(tmp_path / "out"),
                                       "--csd", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2 and "CSD checkpoint" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_blocks_preset_reference_in_a_job_file_is_read_from_the_job_files_folder(sdxl, tmp_path, monkeypatch):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    write_presets(jobs_dir / "presets.json", {"mine": "up_blocks.0.attentions.1=0.7,down_blocks.2.attentions.1"})
    style = new_style(jobs_dir / "s.png")
    jobs = write_jsonl(jobs_dir / "jobs.jsonl", [{"id": "p", "prompt": "a cat", "style": style,
                                                   "blocks": "@presets.json:mine", **FAST}])
    monkeypatch.chdir(tmp_path)  # not the job file's folder
    assert run_batch(jobs, tmp_path / "out", pipeline=sdxl).done == 1
    made = read_png_request(tmp_path / "out" / "p.png")
    assert made.blocks == "up_blocks.0.attentions.1=0.7,down_blocks.2.attentions.1"  # the image records the blocks
    direct = sdxl(Request("a cat", style=style, blocks="up_blocks.0.attentions.1=0.7,down_blocks.2.attentions.1",
                          **FAST))
    assert (pixels(Image.open(tmp_path / "out" / "p.png")) == pixels(direct.images[0])).all()


def test_a_job_naming_a_missing_preset_is_skipped_with_its_line(sdxl, tmp_path):
    write_presets(tmp_path / "presets.json", {"mine": "up_blocks.0.attentions.1"})
    style = new_style(tmp_path / "s.png")
    rows = [{"id": "ok", "prompt": "a cat", "style": style, "blocks": "@presets.json:mine", **FAST},
            {"id": "bad", "prompt": "a cat", "style": style, "blocks": "@presets.json:other", **FAST}]
    problems = []
    report = run_batch(write_jsonl(tmp_path / "jobs.jsonl", rows), tmp_path / "out", pipeline=sdxl,
                       on_problem=problems.append)
    assert report.done == 1
    assert problems == [f"jobs.jsonl line 2: presets file {tmp_path / 'presets.json'} has no preset 'other'; "
                        "it has: mine"]
