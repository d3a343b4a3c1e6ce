"""Batch video jobs: a job line with ``"video": CLIP`` makes a video beside the images, resumably, and a bad one is
reported with its line like any bad line."""

import json

import av

from instantstyle.app.batch import read_jobs, run_batch
from instantstyle.core.video_options import VideoRequest


def video_line(tiny, modes, video_models, **changes):
    return {"id": "clip", "prompt": "a cat", "style": str(tiny.style_image), "model": str(tiny.sdxl),
            "adapter": str(tiny.sdxl_adapter), "controlnet": str(modes.sdxl_controlnet), "steps": 2, "seed": 4,
            "video": {"clip": str(video_models.clip), "frames": 3, "width": 64, "height": 64, "steps": 2,
                      "inversion_steps": 2, "video_model": str(video_models.i2vgen)}, **changes}


def test_a_video_line_makes_a_video_beside_the_images_and_resumes(tiny, modes, video_models, sdxl, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    image = {"id": "still", "prompt": "a cat", "style": str(tiny.style_image), "steps": 2, "width": 64,
             "height": 64, "seed": 1}
    jobs.write_text("\n".join(json.dumps(line) for line in (image, video_line(tiny, modes, video_models))) + "\n")
    report = run_batch(jobs, tmp_path / "out", runtime=None, pipeline=sdxl)
    assert (report.done, report.failed, report.problems) == (2, 0, [])
    with av.open(str(tmp_path / "out" / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3
    entries = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").open()}
    assert VideoRequest.from_dict(entries["clip"]["request"]).options.frames == 3
    assert run_batch(jobs, tmp_path / "out", pipeline=sdxl).skipped == 2


def test_a_video_line_with_a_clip_that_is_not_a_video_is_a_bad_line(tiny, modes, video_models, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    line = video_line(tiny, modes, video_models)
    line["video"] = {**line["video"], "clip": "notes.mp4"}
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(line) + "\n")
    listed = read_jobs(jobs)
    assert listed.jobs == [] and "jobs.jsonl line 1" in listed.problems[0] and "not a readable video" in \
        listed.problems[0]


def test_a_video_line_naming_only_the_clip_takes_the_default_options(tiny, video_models, tmp_path):
    line = {"prompt": "a cat", "style": str(tiny.style_image), "video": str(video_models.clip)}
    video = VideoRequest.from_dict(line)
    assert (video.options.frames, video.options.width, video.request.control) == (16, 512, "canny")


def test_a_video_job_clip_is_found_beside_the_job_file(tiny, modes, video_models, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(video_models.clip.read_bytes())
    line = video_line(tiny, modes, video_models)
    line["video"] = {**line["video"], "clip": "clip.mp4"}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(line) + "\n")
    job = read_jobs(tmp_path / "jobs.jsonl").jobs[0]
    assert job.video.clip == str((tmp_path / "clip.mp4").resolve())
    assert job.outputs == ["clip.mp4", "clip.first.png", "clip.json"]
