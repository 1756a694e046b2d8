"""Scoring for the service: prompts from the one builder (or as the client sends them), P(Yes)
from the one scoring function.

One thread runs every forward pass: a tokenizer is not safe to call from two threads at once,
and prompts from requests that wait together share a batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from e2urec.data.prompt import Profile
from e2urec.data.sample import YES, Sample
from e2urec.model.scoring import score
from e2urec.service.live import Catalogue, LiveModel
from e2urec.service.schemas import PromptScores, Scored, ScoreRequest, ScoreResponse

log = logging.getLogger("e2urec.service")


class UnknownItems(ValueError):
    def __init__(self, field: str, ids: list[str]):
        shown = ", ".join(repr(i) for i in ids[:10])
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        super().__init__(f"{field}: unknown item id(s) {shown}{more}")
        self.field = field


class NoTemplate(ValueError):
    """History and candidates sent to a deployment whose prompts were imported as they were."""


def build_samples(catalogue: Catalogue, req: ScoreRequest) -> list[Sample]:
    """One prompt per candidate, as `prepare` writes them (last K of the history); or the
    prompts as given."""
    if req.prompts is not None:
        return [Sample(p, YES, "", "", None, 0) for p in req.prompts]
    if catalogue.template is None:
        raise NoTemplate(
            "history: this deployment's prompts were imported as they were, so it has no "
            'template to build prompts from a history; send {"prompts": [...]}'
        )
    titles = catalogue.titles
    for name, ids in (
        ("history", [h.item for h in req.history]),
        ("candidates", req.candidates),
    ):
        unknown = [i for i in ids if i not in titles]
        if unknown:
            raise UnknownItems(name, unknown)
    past = [(titles[h.item], h.rating) for h in req.history[-catalogue.history :]]
    profile = Profile(req.user.gender, req.user.age, req.user.job)
    render = catalogue.template.render
    return [
        Sample(render(past, titles[c], profile, catalogue.kind), YES, "", c, 0.0, 0)
        for c in req.candidates
    ]


@dataclass
class Job:
    samples: list[Sample]
    future: Future = field(default_factory=Future)


class Batcher:
    """Queue of scoring jobs served by one thread; returns (version, p_yes) per job."""

    def __init__(self, live: LiveModel, batch_size: int, max_prompts: int):
        self._live, self._batch_size, self._max = live, batch_size, max_prompts
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="scorer", daemon=True)
        self._thread.start()

    def submit(self, samples: list[Sample]) -> Future:
        job = Job(samples)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _take(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs, size = [first], len(first.samples)
        while size < self._max:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # close after this batch
                break
            jobs.append(job)
            size += len(job.samples)
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            live = self._live.get()  # one version for the whole batch
            try:
                samples = [s for job in jobs for s in job.samples]
                p_yes = score(live.rec, samples, self._batch_size)["p_yes"]
            except Exception as err:  # the service keeps serving; this batch's callers see it
                log.exception("scoring failed")
                for job in jobs:
                    job.future.set_exception(err)
                continue
            bounds = np.cumsum([0] + [len(job.samples) for job in jobs])
            for job, lo, hi in zip(jobs, bounds[:-1], bounds[1:]):
                job.future.set_result((live.version, p_yes[lo:hi]))


class TooMany(ValueError):
    """A list over the service's size limit (answered with 413)."""


async def rank(
    live: LiveModel, batcher: Batcher, limits, req: ScoreRequest
) -> ScoreResponse | PromptScores:
    """Scores of the candidates, highest first, with the model version that produced them; or
    of the prompts, in their order."""
    for name, size, limit in (
        ("candidates", len(req.candidates or ()), limits.max_candidates),
        ("prompts", len(req.prompts or ()), limits.max_candidates),
        ("history", len(req.history or ()), limits.max_history),
    ):
        if size > limit:
            raise TooMany(f"{name}: {size} entries, the limit is {limit}")
    samples = build_samples(live.get().catalogue, req)
    version, p_yes = await asyncio.wrap_future(batcher.submit(samples))
    if req.prompts is not None:
        return PromptScores(model=version, p_yes=[float(p) for p in p_yes])
    order = np.argsort(-p_yes, kind="stable")
    scores = [Scored(item=req.candidates[i], p_yes=float(p_yes[i])) for i in order]
    return ScoreResponse(model=version, scores=scores)
