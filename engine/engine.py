"""The engine: one persistent worker thread that owns the model and runs jobs.

Callers (the GUI bridge, the CLI, tests) submit frozen requests and get a job id back at
once; everything else arrives as events, tagged with that id, through listeners that are
called *on the engine thread* (the Qt bridge re-emits them as queued signals). Cancelling
sets a flag the driver checks after every model call, so a job stops within one step.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

import torch

from .algorithms.common import Progress
from .denoiser import Denoiser
from .errors import EngineError, OutOfMemoryError
from .jobs import JOB_RUNNERS, JobContext, JobResult
from .models import ModelBundle, load_model
from .preview import Previewer
from .types import (
    Cancelled,
    EditRequest,
    Event,
    Failed,
    Finished,
    LoadModelRequest,
    ModelInfo,
    ModelLoaded,
    Started,
    Step,
)

log = logging.getLogger(__name__)
Listener = Callable[[Event], None]
FINAL = (Finished, Failed, Cancelled, ModelLoaded)


class _JobCancelled(Exception):
    pass


class Engine:
    """Run ``EditRequest``s and ``LoadModelRequest``s on one background thread, in order."""

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        listener: Listener | None = None,
    ):
        self._listeners: list[Listener] = [listener] if listener else []
        self._queue: deque[tuple[int, EditRequest | LoadModelRequest]] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._cancelled: set[int] = set()
        self._decode_next = False  # a full VAE decode of the next x̂₀ was asked for
        self._running: int | None = None
        self._final: dict[int, Event] = {}
        self._stop = False
        self.bundle: ModelBundle | None = None
        self.denoiser: Denoiser | None = None
        self.previewer: Previewer | None = None
        self.default_device, self.default_dtype = device, dtype
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        if model is not None:
            self.load_model(model, device, dtype)

    # ---- public API (any thread) ----------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def load_model(
        self,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        prediction_type: str | None = None,
    ) -> int:
        """Queue a model load; the current model stays usable if it fails."""
        return self._enqueue(
            LoadModelRequest(
                model, device or self.default_device, dtype or self.default_dtype, prediction_type
            )
        )

    def submit(self, request: EditRequest, supersede: bool = False) -> int:
        """Queue a job. ``supersede`` drops edit jobs still waiting in the queue."""
        if supersede:
            with self._cv:
                stale = [(j, r) for j, r in self._queue if isinstance(r, EditRequest)]
                for item in stale:
                    self._queue.remove(item)
            for j, _ in stale:
                self._emit(Cancelled(j))
        return self._enqueue(request)

    def cancel(self, job_id: int | None = None) -> None:
        """Cancel a queued or running job (the running one if ``job_id`` is None)."""
        with self._cv:
            job_id = self._running if job_id is None else job_id
            if job_id is None:
                return
            queued = [(j, r) for j, r in self._queue if j == job_id]
            for item in queued:
                self._queue.remove(item)
            if not queued and job_id == self._running:
                self._cancelled.add(job_id)
        if queued:
            self._emit(Cancelled(job_id))

    def request_full_preview(self) -> None:
        """Show the running job's next x̂₀ through the real VAE decoder instead of the cheap
        linear map (costs one decode; for a closer look mid-job)."""
        self._decode_next = True

    def wait(self, job_id: int, timeout: float | None = None) -> Event | None:
        """Block until the job's final event (Finished/Failed/Cancelled/ModelLoaded)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while job_id not in self._final:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)
            return self._final[job_id]

    def run(
        self, request: EditRequest, on_event: Listener | None = None, timeout: float | None = None
    ) -> Event | None:
        """Submit and wait; ``on_event`` sees this job's events. For the CLI and tests."""
        box: dict[str, int] = {}
        early: list[Event] = []

        def relay(ev: Event) -> None:
            if "id" not in box:
                early.append(ev)
            elif ev.job_id == box["id"] and on_event:
                on_event(ev)

        self.add_listener(relay)
        try:
            box["id"] = job_id = self.submit(request)
            if on_event:
                for ev in [e for e in early if e.job_id == job_id]:
                    on_event(ev)
            return self.wait(job_id, timeout)
        finally:
            self.remove_listener(relay)

    @staticmethod
    def methods() -> list[str]:
        """The ``EditRequest.method`` names this build can run."""
        return sorted(JOB_RUNNERS)

    @property
    def model_info(self) -> ModelInfo | None:
        b = self.bundle
        if b is None:
            return None
        return ModelInfo(
            b.name,
            str(b.device),
            str(b.dtype).replace("torch.", ""),
            b.prediction_type,
            b.native_size,
        )

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            if self._running is not None:
                self._cancelled.add(self._running)
            self._cv.notify_all()
        self._thread.join(timeout)

    # ---- worker thread ---------------------------------------------------------------------

    def _enqueue(self, request) -> int:
        with self._cv:
            job_id = next(self._ids)
            self._queue.append((job_id, request))
            self._cv.notify_all()
        return job_id

    def _emit(self, event: Event) -> None:
        if isinstance(event, FINAL):
            with self._cv:
                self._final[event.job_id] = event
                self._cv.notify_all()
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:  # a broken listener must not kill the engine
                log.exception("engine listener failed")

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job_id, request = self._queue.popleft()
                self._running = job_id
            try:
                with torch.no_grad():
                    self._execute(job_id, request)
            finally:
                with self._cv:
                    self._running = None
                    self._cancelled.discard(job_id)

    def _execute(self, job_id: int, request) -> None:
        try:
            if isinstance(request, LoadModelRequest):
                self._emit(Started(job_id, "load", 0))
                self._load(request)
                self._emit(ModelLoaded(job_id, self.model_info))
            else:
                self._run_job(job_id, request)
        except _JobCancelled:
            self._emit(Cancelled(job_id))
        except EngineError as e:
            self._emit(Failed(job_id, str(e), type(e).__name__))
        except torch.OutOfMemoryError:
            self._release_memory()
            msg = OutOfMemoryError(
                "The device ran out of memory. Try a smaller image, fewer samples, or run on "
                "the CPU; your work is unchanged."
            )
            self._emit(Failed(job_id, str(msg), "OutOfMemoryError"))
        except Exception as e:  # the engine survives anything a job throws
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            self._emit(Failed(job_id, f"Unexpected error: {type(e).__name__}: {e}", "internal"))

    def _load(self, req: LoadModelRequest) -> None:
        bundle = load_model(req.model, req.device, req.dtype, req.prediction_type)
        # release the old model before keeping the new one
        self.bundle = self.denoiser = self.previewer = None
        self._release_memory()
        self.bundle, self.denoiser = bundle, Denoiser(bundle)
        self.previewer = Previewer(bundle)

    def _release_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _run_job(self, job_id: int, req: EditRequest) -> None:
        if self.bundle is None:
            raise EngineError("No model is loaded yet; open a model first.")
        runner = JOB_RUNNERS.get(req.method)
        if runner is None:
            raise EngineError(f"The method {req.method!r} is not available in this version.")
        ctx = JobContext(self.bundle, self.denoiser)
        self._emit(Started(job_id, req.method, req.steps))
        gen = runner(ctx, req)
        while True:
            if job_id in self._cancelled:
                gen.close()
                raise _JobCancelled
            try:
                progress: Progress = next(gen)
            except StopIteration as stop:
                result: JobResult = stop.value
                break
            self._emit(self._step_event(job_id, ctx, progress))
        params = {**req.parameters(), **result.parameters, "model": self.bundle.name}
        self._emit(Finished(job_id, result.image, params, result.extras))

    def _step_event(self, job_id: int, ctx: JobContext, p: Progress) -> Step:
        preview, label = p.image, p.label
        if preview is None and p.x0 is not None:
            if self._decode_next:
                self._decode_next = False
                preview = self.bundle.decode(p.x0[:1])
                label = f"{label} (decoded)".strip()
            else:
                preview = self.previewer(p.x0, ctx.preview_size)
        return Step(job_id, p.i, p.n, int(p.t), preview, label)
