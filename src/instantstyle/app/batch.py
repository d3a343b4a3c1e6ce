"""Batch jobs: a job file in, a folder of images and a manifest out, resumable after any crash.

A job is a ``Request`` with an id. Job files are JSON Lines, CSV with the same columns, or a matrix
spec (styles x prompts x seeds). Every finished image is written atomically with its request in the
PNG, then one line is appended to ``DIR/manifest.jsonl``; a job counts as done only when its line
says so and its files exist, so a run killed at any moment loses at most the images in flight and
rerunning the same command does the rest. The driver alone writes files and the manifest; workers
(in-process, or Ray actors in ``ray_batch``) only turn batches of jobs into images, each with the pipeline
the ``Runtime`` describes and the core's batched generation (``StylePipeline.generate_many``).
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.blocks import is_preset_ref, split_preset_ref
from ..core.preflight import check
from ..core.request import CONTROL_KINDS, PATH_FIELDS, AdapterUse, Request, StyleRef, write_png
from ..core.video_options import SOURCE_FRAME, VideoRequest
from ..errors import UserError
from ..files import safe_json
from ..files.atomic import atomic_path, cannot_write, remove_stale_temps, writable_folder
from ..files.textfiles import open_regular
from ..loading.runtime import Runtime
from .workers import BatchResult, Job, Outcome, Scoring, Worker, pipeline_key

MANIFEST = "manifest.jsonl"
LOCK = ".instantstyle-batch.lock"
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always fullmatch: "$" also matches before a final "\n"

#: How a CSV cell spells a yes/no field (``hidiffusion``).
BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


# --- jobs -------------------------------------------------------------------------------------
@dataclass
class JobList:
    """The jobs read from a job file, and one message per line that could not become a job."""

    jobs: list[Job]
    problems: list[str] = field(default_factory=list)


def read_jobs(path: str | Path, defaults: dict[str, Any] | None = None, runtime: Runtime | None = None) -> JobList:
    """Read a job file: ``.jsonl`` (one JSON object per line), ``.csv`` (a header row of option names) or
    ``.json`` (a matrix spec). Relative paths inside are taken from the job file's folder, else the current one;
    a job that fails ``check`` as ``runtime`` would run it (an image over its pixel cap, HiDiffusion with
    ``--compile``...) is skipped like any bad line."""
    path = Path(path).expanduser()
    try:
        with open_regular(path, f"job file {path}") as file:
            text = safe_json.decode(file.read())  # bytes that are not UTF-8 reject their line (or cell) only
    except OSError as err:
        raise UserError(f"job file {path}: cannot be read ({err.strerror})") from None
    kind = job_file_kind(path, text)
    rows = {"jsonl": jsonl_rows, "csv": csv_rows, "matrix": matrix_rows}[kind](text, path.name)
    return make_jobs(rows, path.parent, defaults, runtime)


def job_file_kind(path: Path, text: str) -> str:
    """By extension (``.jsonl``/``.ndjson``, ``.csv``, ``.json``), else by the first character."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        return "matrix"
    first = text.lstrip()[:1]
    if first == "{":
        try:
            safe_json.loads(text)
        except UserError:  # not one JSON document (or one nested absurdly deep): lines, each judged alone
            return "jsonl"
        return "matrix"
    return "csv"


Row = tuple[str, "dict[str, Any] | UserError"]


def jsonl_rows(text: str, name: str = "jobs") -> Iterator[Row]:
    """One JSON object per line; blank lines and ``#`` comments are skipped."""
    for number, line in safe_json.lines(text):
        where = f"{name} line {number}"
        if line is None:
            yield where, UserError("not UTF-8 text")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = safe_json.loads(line)
        except UserError as err:
            yield where, err
            continue
        yield where, data if isinstance(data, dict) else UserError("a job must be a JSON object")


def csv_rows(text: str, name: str = "jobs") -> Iterator[Row]:
    """A header row of option names (plus ``id``); empty cells are "not given"; several styles are
    separated by ``;`` (``a.png;b.png:0.5``)."""
    dialect = "excel-tab" if "\t" in text.partition("\n")[0] else "excel"
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    known = {f.name for f in dataclasses.fields(Request)} | {"id", "video"}  # video: a clip path (a video job)
    try:
        columns = [c.strip() for c in reader.fieldnames or []]
    except csv.Error as err:
        raise UserError(f"{name} line 1: not a CSV header ({err})") from None
    if not safe_json.is_utf8(",".join(columns)):
        raise UserError(f"{name} line 1: not UTF-8 text")
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise UserError(f"{name} line 1: unknown column(s): {', '.join(unknown)}")
    if "prompt" not in columns:
        raise UserError(f"{name} line 1: the header needs a prompt column")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # a stray carriage return, a cell past csv's size limit...
            yield f"{name} line {reader.reader.line_num}", UserError(f"not a CSV row ({err})")
            continue
        where = f"{name} line {reader.line_num}"
        if None in row:
            yield where, UserError("more cells than header columns")
            continue
        if not all(safe_json.is_utf8(v) for v in row.values() if v is not None):
            yield where, UserError("not UTF-8 text")
            continue
        cells = {k.strip(): v.strip() for k, v in row.items() if v is not None and v.strip()}
        if not cells:
            continue
        try:
            yield where, {k: _from_cell(k, v) for k, v in cells.items()}
        except UserError as err:
            yield where, err


def _from_cell(name: str, value: str) -> Any:
    """A CSV cell as the type of its ``Request`` field."""
    if name == "style":
        return [s.strip() for s in value.split(";") if s.strip()]
    types = {f.name: str(f.type) for f in dataclasses.fields(Request)}
    kind = types.get(name, "str")
    if kind == "bool":
        if value.lower() not in BOOLEANS:
            raise UserError(f"{name} must be true or false, got {value!r}")
        return BOOLEANS[value.lower()]
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        raise UserError(f"{name} must be a {'whole ' if kind.startswith('int') else ''}number, got {value!r}") from None
    return value


def matrix_rows(text: str, name: str = "jobs") -> Iterator[Row]:
    """``{"styles": [...], "prompts": [...], "seeds": [...] or N, ...options for every job}``: one job per
    combination, id ``s<style>-p<prompt>-<seed>`` (a style may be a list of references to blend)."""
    try:
        if not safe_json.is_utf8(text):
            raise UserError("not UTF-8 text")
        spec = safe_json.loads(text)
    except UserError as err:
        raise UserError(f"{name}: {err}") from None
    if not isinstance(spec, dict) or "prompts" not in spec or "styles" not in spec:
        raise UserError(f'{name}: a matrix spec is a JSON object with "styles" and "prompts" lists')
    spec = dict(spec)
    styles, prompts, seeds = spec.pop("styles"), spec.pop("prompts"), spec.pop("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    for label, values in (("styles", styles), ("prompts", prompts), ("seeds", seeds)):
        if not isinstance(values, list) or not values:
            raise UserError(f'{name}: "{label}" must be a non-empty list')
    for key in ("style", "prompt", "seed", "id"):
        if key in spec:
            raise UserError(f'{name}: "{key}" cannot be set for every job of a matrix (use "{key}s")')
    unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(Request)})
    if unknown:
        raise UserError(f"{name}: unknown option(s): {', '.join(unknown)}")
    for si, style in enumerate(styles):
        for pi, prompt in enumerate(prompts):
            for seed in seeds:
                where = f"{name} style {si + 1}, prompt {pi + 1}, seed {seed}"
                job_id = f"s{si + 1}-p{pi + 1}-{seed}"
                yield where, {**spec, "style": style, "prompt": prompt, "seed": seed, "id": job_id}


def make_jobs(rows: Iterable[Row], base: Path | None = None, defaults: dict[str, Any] | None = None,
              runtime: Runtime | None = None) -> JobList:
    """Turn rows into jobs, each checked once (``preflight.check``, as ``runtime`` will run it); a row that cannot
    become a job is reported (with where it is) and skipped."""
    result = JobList([])
    ids: dict[str, str] = {}
    outputs: dict[str, str] = {}
    checked: dict[tuple[Any, ...], UserError | None] = {}
    for where, data in rows:
        try:
            if isinstance(data, UserError):
                raise data
            job = _make_job(data, base, defaults or {}, ids)
            if job.video is not None:
                from .video import check_video_job

                check_video_job(job.video, runtime or Runtime())
            else:
                _check(job.request, checked, runtime or Runtime())
            for name in job.outputs:
                other = outputs.get(name.lower())
                if other is not None:
                    raise UserError(f"output {name} is also written by {other} (give the jobs distinct ids)")
        except UserError as err:
            result.problems.append(f"{where}: {err}")
            continue
        ids[job.id.lower()] = where
        outputs.update({name.lower(): where for name in job.outputs})
        result.jobs.append(dataclasses.replace(job, where=where))
    return result


def _make_job(data: dict[str, Any], base: Path | None, defaults: dict[str, Any], ids: dict[str, str]) -> Job:
    data = {**defaults, **data}
    job_id = data.pop("id", None)
    if job_id is not None:
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            job_id = str(job_id)
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise UserError(f"id {job_id!r} must be 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
                            "or '-' (it names the output file)")
        if job_id.lower() in ids:
            raise UserError(f"id {job_id!r} is also used by {ids[job_id.lower()]}")
    video = None
    if "video" in data:  # a video job: the first-frame request's fields and "video": CLIP or {"clip": ...}
        from .video import resolve_video_paths

        video = resolve_video_paths(VideoRequest.from_dict(data), lambda path: _local(path, base))
        request = _resolve_paths(video.request, base)
        video = video.replace(request=request)
    else:
        request = _resolve_paths(Request.from_dict(data), base)
    if job_id is None:  # stable under reordering the file; identical lines get -2, -3...
        what = video.to_json() if video is not None else request.to_json()
        job_id = "job-" + hashlib.sha256(what.encode()).hexdigest()[:12]
        stem, n = job_id, 1
        while job_id.lower() in ids:
            n += 1
            job_id = f"{stem}-{n}"
    if request.seed is None:  # derived from the id, so a rerun or another worker makes the same image
        request = request.replace(seed=int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16))
    return Job(job_id, request, video=video.replace(request=request) if video is not None else None)


def _local(path: str, base: Path | None) -> str:
    """An existing relative path from the job file's folder (else the current one), made absolute (the clip's
    first frame, ``SOURCE_FRAME``, stays as it is)."""
    if path == SOURCE_FRAME:
        return path
    p = Path(path).expanduser()
    for candidate in ([base / p] if base is not None and not p.is_absolute() else []) + [p]:
        if candidate.exists():
            return str(candidate.resolve())
    return str(p)


def _resolve_paths(request: Request, base: Path | None) -> Request:
    changes: dict[str, Any] = {"style": tuple(StyleRef(_local(r.path, base), r.weight) for r in request.style)}
    for name in PATH_FIELDS:
        value = getattr(request, name)
        if name == "control" and value in CONTROL_KINDS:
            continue
        if value is not None:
            changes[name] = _local(value, base)
    changes["regions"] = tuple(_local(r, base) for r in request.regions)
    changes["blocks"] = _local_preset_ref(request.blocks, base)
    changes["adapters"] = tuple(
        AdapterUse(_local(a.path, base), tuple(StyleRef(_local(r.path, base), r.weight) for r in a.style),
                   _local_preset_ref(a.blocks, base), a.scale, tuple(_local(r, base) for r in a.regions))
        for a in request.adapters
    )
    return request.replace(**changes)


def _local_preset_ref(spec: str | None, base: Path | None) -> str | None:
    """A blocks spec ``@FILE:NAME`` with FILE taken from the job file's folder like every other path."""
    if spec is None or not is_preset_ref(spec):
        return spec
    file, name = split_preset_ref(spec)
    return f"@{_local(file, base)}:{name}"


def _check(request: Request, checked: dict[Any, UserError | None], runtime: Runtime) -> None:
    """The request's ``check`` (images readable, blocks well-formed, runnable as ``runtime`` says; its model is
    checked when a worker loads it), once per distinct input."""
    key = request.replace(prompt="", negative_prompt="", seed=None, num_images=1)  # what the checks look at
    if key not in checked:
        try:
            check(request, runtime)
            checked[key] = None
        except UserError as err:
            checked[key] = err
    if checked[key] is not None:
        raise checked[key]  # type: ignore[misc]


# --- the manifest -------------------------------------------------------------------------------
class Manifest:
    """``DIR/manifest.jsonl``: one JSON line per finished job (the last line for an id wins).

    Lines are appended whole and fsynced: a short write (a full disk) is cut back off at once and is a
    ``UserError`` naming the file, and a torn last line (power loss) is cut off on open. Superseded lines are
    dropped by rewriting the file atomically (only when there are some: a run with nothing to do writes
    nothing); a rewrite that fails is a warning, as the file it would replace is still right."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST
        self.warnings: list[str] = []
        self.compaction_failed = False
        self.entries: dict[str, dict[str, Any]] = {}
        self._lines = 0
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a line cut short by a crash: it never counted
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
        for number, line in safe_json.lines(safe_json.decode(data)):
            if line is None:
                self.warnings.append(f"{self.path} line {number}: not UTF-8 text; dropped")
                continue
            if not line.strip():
                continue
            try:
                entry = safe_json.loads(line)
            except UserError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                self.warnings.append(f"{self.path} line {number}: not a manifest entry; dropped")
                continue
            self.entries[entry["id"]] = entry
            self._lines += 1
        if self.superseded or self.warnings:
            self.compact()

    @property
    def superseded(self) -> bool:
        """Whether some lines are older entries of an id that has a later line (``compact`` drops them)."""
        return self._lines != len(self.entries)

    def compact(self) -> None:
        """Rewrite with one line per id (temp file, fsync, rename); on failure (a full disk) the temp file is
        removed and a warning says so, once (no more tries): the file as it is stays right, the last line of an
        id counts."""
        if self.compaction_failed:
            return
        try:
            with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in self.entries.values())
                f.flush()
                os.fsync(f.fileno())
        except UserError as err:
            self.warnings.append(f"manifest not compacted: {err}; its superseded lines stay (the last line of a "
                                 "job counts)")
            self.compaction_failed = True
            return
        self._lines = len(self.entries)

    def append(self, entry: dict[str, Any]) -> None:
        """Add one line, whole or not at all: a short write is cut back off and is a ``UserError``."""
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"manifest {cannot_write(self.path, err)}") from None
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                written = 0
                while written < len(line):  # os.write may write less than asked (a full disk), then fail
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except OSError as err:
                os.ftruncate(fd, start)  # never leave a torn line for the next append to run into
                raise UserError(f"manifest {cannot_write(self.path, err)}") from None
        finally:
            os.close(fd)
        self.entries[entry["id"]] = entry
        self._lines += 1

    def is_done(self, job: Job, folder: Path) -> bool:
        """Done means: the manifest says so for this exact job, and every output file is there."""
        entry = self.entries.get(job.id)
        return (
            entry is not None and entry.get("status") == "done" and entry.get("key") == job.key
            and all((folder / name).is_file() for name in job.outputs)
        )

    def has_failed(self, job: Job) -> bool:
        entry = self.entries.get(job.id)
        return entry is not None and entry.get("status") == "failed" and entry.get("key") == job.key


# --- running -------------------------------------------------------------------------------------
def plan_batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Group jobs by pipeline (model, adapter, encoder), then by what they must share to be denoised together
    (``pipeline.batch_key``; a job that cannot be batched is alone), into batches of at most ``batch_size``
    images; the order is deterministic, so every runner makes the same batches."""
    from ..core.plan import batch_key, can_batch

    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        solo = () if can_batch(job.request) and job.video is None else (job.id,)
        groups.setdefault((pipeline_key(job.request), batch_key(job.request), solo), []).append(job)
    batches: list[list[Job]] = []
    for group in sorted(groups.values(), key=lambda g: repr((pipeline_key(g[0].request), batch_key(g[0].request)))):
        current: list[Job] = []
        for job in group:
            if current and sum(j.request.num_images for j in current) + job.request.num_images > batch_size:
                batches.append(current)
                current = []
            current.append(job)
        batches.append(current)
    return batches


@dataclass
class BatchReport:
    """What a run did: counts, the problems skipped, and each worker's image-encoder forward passes."""

    output_dir: Path
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_before: int = 0
    images: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # ids of jobs run again after their Ray worker was lost
    encoder_runs: dict[str, int] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        return self.output_dir / MANIFEST

    def summary(self) -> str:
        rate = f" ({self.images / self.seconds:.2f} images/s)" if self.seconds and self.images else ""
        parts = [f"{self.done} done", f"{self.skipped} already done", f"{self.failed} failed"]
        if self.failed_before:
            parts.append(f"{self.failed_before} failed earlier (--retry-failed to rerun)")
        if self.problems:
            parts.append(f"{len(self.problems)} bad line(s) skipped")
        if self.retried:
            parts.append(f"{len(set(self.retried))} retried after their Ray worker was lost")
        return (f"{self.total} jobs: {', '.join(parts)}; {self.images} images in {self.seconds:.1f} s{rate}; "
                f"manifest {self.manifest}")


class _Lock:
    """An exclusive lock on the output folder, so two runs never write one manifest (freed on any exit).

    The lock file stays in the folder: deleting it on release would let a run that opened it just
    before lock the deleted file while the next run locks a new one, both "holding" the lock."""

    def __init__(self, folder: Path) -> None:
        self.file = open(folder / LOCK, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise UserError(f"output folder {folder} is in use by another batch run") from None

    def release(self) -> None:
        self.file.close()


def prepare_output_dir(output_dir: str | Path) -> Path:
    return writable_folder(output_dir, f"output {Path(output_dir).expanduser()}").resolve()


def as_jobs(jobs: Any, defaults: dict[str, Any] | None = None, runtime: Runtime | None = None) -> JobList:
    """Accept a job file path, a ``JobList``, or a list of ``Job``s, ``Request``s or option dicts; every job checked
    as ``runtime`` will run it (those given as ``Job``s too), a failing one reported as a problem."""
    runtime = runtime or Runtime()
    if isinstance(jobs, (str, Path)):
        return read_jobs(jobs, defaults, runtime)
    if isinstance(jobs, JobList):
        return _checked_jobs(jobs.jobs, jobs.problems, runtime)
    rows: list[Row] = []
    listed: list[Job] = []
    for i, item in enumerate(jobs):
        if isinstance(item, Job):
            listed.append(item)
        elif isinstance(item, Request):
            rows.append((f"job {i + 1}", {k: v for k, v in item.to_dict().items() if k != "version"}))
        else:
            rows.append((f"job {i + 1}", item if isinstance(item, dict) else UserError("not a job")))
    made = make_jobs(rows, None, defaults, runtime)
    given = _checked_jobs(listed, [], runtime)
    return JobList(given.jobs + made.jobs, given.problems + made.problems)


def _checked_jobs(jobs: Sequence[Job], problems: Sequence[str], runtime: Runtime) -> JobList:
    """Jobs made elsewhere, each checked (``_check``); the failing ones become problems, reported like bad lines."""
    good, bad = [], list(problems)
    checked: dict[Any, UserError | None] = {}
    for job in jobs:
        try:
            _check(job.request, checked, runtime)
        except UserError as err:
            bad.append(f"{job.where or job.id}: {err}")
            continue
        good.append(job)
    return JobList(good, bad)


def run_batch(
    jobs: Any,
    output_dir: str | Path,
    *,
    runtime: Runtime | None = None,
    batch_size: int = 1,
    retry_failed: bool = False,
    strict: bool = False,
    defaults: dict[str, Any] | None = None,
    pipeline: Any = None,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    on_problem: Callable[[str], None] | None = None,
    scoring: Scoring | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> BatchReport:
    """Render every job not yet done into ``output_dir`` (images + ``manifest.jsonl``), resumably.

    ``jobs``: a job file or a list of jobs/requests/dicts. ``pipeline``: an already loaded
    ``StylePipeline`` for jobs that name no other model (in-process runs only; it keeps its own runtime).
    ``runtime``: how workers load every other pipeline (device, offload, low memory, compile, cache folder...).
    ``ray``: distribute batches over Ray actors (``ray_address`` of a cluster, else a local one) with
    ``workers`` actors, each loading with the same ``runtime``. ``scoring``: score every image made; the
    scores go in its manifest line (``"scores"``, one per output) and its PNG. ``on_problem`` hears of each bad
    job line, ``on_warning`` of what went wrong but costs nothing (a manifest line dropped, a failed compaction,
    a job retried after its Ray worker died); both are also in the report."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    if workers is not None and workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    runtime = runtime or Runtime()
    if not ray:  # Ray workers find their devices on their own machines
        runtime.torch_dtype(runtime.placement())
    folder = prepare_output_dir(output_dir)
    job_list = as_jobs(jobs, defaults, runtime)
    for problem in job_list.problems:
        (on_problem or (lambda _: None))(problem)
    if strict and job_list.problems:
        raise UserError(f"{len(job_list.problems)} bad job line(s); nothing was run (--strict)")
    if not job_list.jobs:
        raise UserError("no runnable jobs" + (" (every line was bad)" if job_list.problems else ""))
    lock = _Lock(folder)
    try:
        return _run(job_list, folder, runtime, batch_size, retry_failed, pipeline, ray, ray_address,
                    workers, progress, on_warning or (lambda _: None), scoring)
    finally:
        lock.release()


def _run(job_list: JobList, folder: Path, runtime: Runtime, batch_size: int, retry_failed: bool, pipeline: Any,
         ray: bool, ray_address: str | None, workers: int | None, progress: bool,
         on_warning: Callable[[str], None], scoring: Scoring | None) -> BatchReport:
    remove_stale_temps(folder)  # images and manifest rewrites in flight when a run died (the lock makes them stale)
    manifest = Manifest(folder)
    report = BatchReport(folder, len(job_list.jobs), problems=list(job_list.problems))

    def warn(message: str) -> None:
        report.warnings.append(message)
        on_warning(message)

    for warning in manifest.warnings:
        warn(warning)
    todo = []
    for job in job_list.jobs:
        if manifest.is_done(job, folder):
            report.skipped += 1
        elif manifest.has_failed(job) and not retry_failed:
            report.failed_before += 1
        else:
            todo.append(job)
    videos = [job for job in todo if job.video is not None]
    todo = [job for job in todo if job.video is None]
    batches = plan_batches(todo, batch_size)
    bar = _progress_bar(sum(j.request.num_images for j in todo), progress)
    start = time.perf_counter()

    def record(result: BatchResult) -> None:
        if result.worker:
            report.encoder_runs[result.worker] = result.encoder_runs
        for outcome in result.outcomes:
            _record(outcome, result.worker, folder, manifest, report)
            if bar is not None:
                bar.update(outcome.job.request.num_images)
                bar.set_postfix_str(f"jobs {report.done + report.failed}/{len(todo)}, failed {report.failed}")

    try:
        if not batches:  # nothing to do: no model, no Ray, no output
            pass
        elif ray:
            from .ray_batch import run_on_ray

            def retried(jobs: list[Job], why: str) -> None:
                ids = [job.id for job in jobs]
                report.retried += ids
                warn(f"{', '.join(ids)}: their Ray worker was lost ({why}); retried on the others")

            run_on_ray(batches, runtime, ray_address, workers, record, scoring, retried)
        else:
            worker = Worker(runtime, pipeline, scoring=scoring)
            try:
                for batch in batches:
                    record(worker.run(batch))
            finally:
                worker.close()
        if videos:  # in this process, after the images (on Ray too): see run_video_jobs
            from .video import run_video_jobs

            for outcome in run_video_jobs(videos, folder, runtime, pipeline, scoring):
                _record(outcome, f"{Worker.name_here()}", folder, manifest, report)
    finally:
        report.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if manifest.superseded:
            known = len(manifest.warnings)
            manifest.compact()
            for warning in manifest.warnings[known:]:
                warn(warning)
    return report


def _record(outcome: Outcome, worker: str, folder: Path, manifest: Manifest, report: BatchReport) -> None:
    """Images first (each atomically), then the manifest line: a crash in between only repeats the job."""
    job = outcome.job
    entry: dict[str, Any] = {
        "id": job.id, "key": job.key, "worker": worker, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings": {"batch_s": round(outcome.seconds, 3), "batch_images": outcome.batch_images},
    }
    if outcome.error is None and outcome.video is not None:  # a video job: its files are written already
        entry.update(status="done", seed=outcome.request.seed if outcome.request else None, outputs=job.outputs,
                     request=outcome.video)
        if outcome.video_scores is not None:
            entry["scores"] = outcome.video_scores
        if outcome.score_error is not None:
            entry["score_error"] = outcome.score_error
            report.errors.append(f"{job.id} ({job.where}): made, but not scored: {outcome.score_error}")
        report.done += 1
        report.images += len(outcome.images)
    elif outcome.error is None and outcome.request is not None:
        scores = outcome.scores
        for i, (image, name) in enumerate(zip(outcome.images, job.outputs, strict=True)):
            write_png(image, folder / name, outcome.request, i, scores[i].png_text() if scores else None)
        entry.update(status="done", seed=outcome.request.seed, outputs=job.outputs,
                     request=outcome.request.to_dict())
        if scores is not None:
            entry["scores"] = [s.to_dict() for s in scores]  # one per output, in order
        if outcome.score_error is not None:
            entry["score_error"] = outcome.score_error
            report.errors.append(f"{job.id} ({job.where}): made, but not scored: {outcome.score_error}")
        report.done += 1
        report.images += len(outcome.images)
    else:
        entry.update(status="failed", error=outcome.error, seed=job.request.seed,
                     request=job.video.to_dict() if job.video is not None else job.request.to_dict())
        report.failed += 1
        report.errors.append(f"{job.id} ({job.where}): {outcome.error}")
    manifest.append(entry)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or not total:  # nothing to do: no empty bar
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.1)
