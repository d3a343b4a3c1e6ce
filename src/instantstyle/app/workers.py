"""Turning batches of jobs into images: the job, the worker that runs it, and what comes back.

A ``Worker`` holds one pipeline at a time on one device, loaded as the ``Runtime`` says (the same in
process and in every Ray actor), and runs each batch through the core's batched generation
(``StylePipeline.generate_many``), scoring the images when asked (``Scoring``). The pipelines it loads share one
``EmbeddingMemory`` (a style encoded for one model is known to the next), whose ``encoder_runs`` it reports.
Workers only make images; the batch driver (``batch``) writes them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.request import Request
from ..core.styles import EmbeddingMemory
from ..core.video_options import VideoRequest
from ..errors import UserError
from ..loading.runtime import DEFAULT_MODEL, Runtime
from ..scores.scorer import Scores


@dataclass(frozen=True)
class Job:
    """One request to render, named by ``id`` (its output files are ``ID.png`` or ``ID-N.png``; a video job's,
    ``ID.mp4`` with ``ID.first.png`` and ``ID.json`` beside it). ``video``: the job makes a video (its
    ``request`` is then the first-frame request)."""

    id: str
    request: Request
    where: str = ""  # "jobs.jsonl line 3", for messages
    video: VideoRequest | None = None

    @property
    def outputs(self) -> list[str]:
        if self.video is not None:
            return [f"{self.id}.mp4", f"{self.id}.first.png", f"{self.id}.json"]
        n = self.request.num_images
        return [f"{self.id}.png"] if n == 1 else [f"{self.id}-{i + 1}.png" for i in range(n)]

    @property
    def key(self) -> str:
        """Fingerprint of what the job makes: a done job whose line changed is made again."""
        what = self.video.to_json() if self.video is not None else self.request.to_json()
        return hashlib.sha256(what.encode()).hexdigest()[:16]


@dataclass
class Outcome:
    """What a worker sends back for one job: its images and completed request, or an error; with scoring, the
    images' scores (or why they could not be computed: the images still count)."""

    job: Job
    images: list[Any]
    request: Request | None
    error: str | None
    seconds: float
    batch_images: int
    scores: list[Scores] | None = None
    score_error: str | None = None
    video: dict[str, Any] | None = None  # a video job's completed record (its files are written by then)
    video_scores: dict[str, Any] | None = None


@dataclass(frozen=True)
class Scoring:
    """Score every image a worker makes (``scores.scorers.Scorers.score`` against its request), with CSD from
    ``csd``."""

    csd: str | None = None


@dataclass
class BatchResult:
    """A worker's answer for one batch, with its running count of image-encoder forward passes."""

    outcomes: list[Outcome]
    worker: str
    encoder_runs: int


def pipeline_key(request: Request) -> tuple[str | None, str | None, str | None]:
    return request.model, request.adapter, request.image_encoder


def _fits(pipe: Any, key: tuple[str | None, str | None, str | None]) -> bool:
    """Whether a loaded pipeline is the one a job names (``None``: any)."""
    res = pipe.resources
    mine = (res.model_id, res.adapter_ref or res.adapter.path, res.image_encoder.identity)
    return all(want is None or Path(want).expanduser().resolve() == Path(have).expanduser().resolve()
               for want, have in zip(key, mine, strict=True))


class Worker:
    """Turns batches of jobs into images on one device: one pipeline at a time, loaded as ``runtime`` says, and
    every style it has encoded kept (one ``EmbeddingMemory``, the given pipeline's, shared by those it loads)."""

    def __init__(self, runtime: Runtime | None = None, pipeline: Any = None, threads: int | None = None,
                 scoring: Scoring | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.runtime = runtime or Runtime()
        self.scoring = scoring
        self.name = self.name_here()
        self.given = pipeline
        self.pipeline: Any = None
        self.loaded: tuple[Any, ...] | None = None
        self.load_errors: dict[tuple[Any, ...], Exception] = {}
        self.memory = pipeline.resources.embeddings.memory if pipeline is not None else EmbeddingMemory()
        self.runs_before = self.memory.encoder_runs  # a given pipeline may have encoded before
        self.scorers: dict[int, Any] = {}

    @property
    def encoder_runs(self) -> int:
        """Image-encoder passes this worker's pipelines made (styles encoded by an earlier model are not redone)."""
        return self.memory.encoder_runs - self.runs_before

    @staticmethod
    def name_here() -> str:
        """How this process names itself in the manifest."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        """Nothing to undo: the worker changes nothing in a pipeline it was given."""

    def pipeline_for(self, jobs: Sequence[Job]) -> Any:
        """The given pipeline if the jobs name no other model, else the loaded one when it fits, else a new
        one (the previous one released first)."""
        from ..core.pipeline import StylePipeline
        from ..core.preflight import default_adapter

        key = pipeline_key(jobs[0].request)
        if self.given is not None and _fits(self.given, key):
            return self.given
        if self.pipeline is not None and self.loaded == key:
            return self.pipeline
        if key in self.load_errors:
            raise self.load_errors[key]
        self.pipeline = self.loaded = None
        self.scorers.clear()
        model, adapter, encoder = key
        try:
            model = model or DEFAULT_MODEL
            adapter = adapter or default_adapter(model, self.runtime.single_file_config)  # the family's own
            pipe = StylePipeline.from_pretrained(model, adapter, self.runtime, image_encoder=encoder,
                                                 blocks=jobs[0].request.blocks, embedding_memory=self.memory)
        except Exception as err:
            self.load_errors[key] = err
            raise
        self.pipeline, self.loaded = pipe, key
        return pipe

    def run(self, jobs: Sequence[Job]) -> BatchResult:
        """Make the images of one batch; a failing batch is retried job by job so one bad job fails alone."""
        outcomes: list[Outcome] = []
        try:
            pipe = self.pipeline_for(jobs)
        except Exception as err:  # the model cannot load: every job of the batch fails with that reason
            return BatchResult([self._failed(j, err, 0.0) for j in jobs], self.name, self.encoder_runs)
        start = time.perf_counter()
        try:
            results = pipe.generate_many([j.request for j in jobs])
        except Exception as err:
            if len(jobs) == 1:
                return BatchResult([self._failed(jobs[0], err, time.perf_counter() - start)], self.name,
                                   self.encoder_runs)
            for job in jobs:
                outcomes += self.run([job]).outcomes
            return BatchResult(outcomes, self.name, self.encoder_runs)
        seconds = time.perf_counter() - start
        images = sum(len(r.images) for r in results)
        outcomes = [Outcome(j, r.images, r.request, None, seconds, images, *self._score(pipe, r))
                    for j, r in zip(jobs, results, strict=True)]
        return BatchResult(outcomes, self.name, self.encoder_runs)

    def _score(self, pipe: Any, result: Any) -> tuple[list[Scores] | None, str | None]:
        """(scores, None), or (None, why not): a failure to score never loses the images."""
        if self.scoring is None:
            return None, None
        from ..scores.scorers import Scorers

        try:
            scorers = self.scorers.setdefault(id(pipe), Scorers(pipe))
            return scorers.score(result, csd=self.scoring.csd), None
        except Exception as err:
            return None, _one_line(err)

    def _failed(self, job: Job, err: Exception, seconds: float) -> Outcome:
        return Outcome(job, [], None, _one_line(err), seconds, 0)


def _one_line(err: Exception) -> str:
    message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    return message.splitlines()[0] if message else type(err).__name__
