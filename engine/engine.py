"""The engine: one persistent worker thread that owns the model and runs jobs.

Callers (the GUI bridge, the CLI, tests) submit frozen requests and get a job id back at
once; everything else arrives as events, tagged with that id, through listeners. Each
listener has its own delivery thread, in event order; the engine waits briefly for a
listener to take an event (so a listener that cancels on step i stops the job at step i) but
never more than ``LISTENER_GRACE`` seconds, so a listener that blocks cannot hold the engine.
Cancelling sets a flag the driver checks after every model call and in every bounded chunk
of CPU work, so a job stops within one step.

Every job gets exactly one final event (Finished, Failed, Cancelled, or ModelLoaded for a
load): also a job cancelled while queued, still queued at shutdown, or submitted after it.
Final events are kept for ``wait`` within a memory budget (``FINAL_BYTES``); older results
beyond it keep their event but drop their images.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import io
import itertools
import logging
import queue
import threading
import time
import traceback
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
import torch

from .algorithms.common import Progress, drive
from .algorithms.inversion import Inversion
from .denoiser import Denoiser
from .errors import EngineError, InputError, OutOfMemoryError
from .fast import FastPath, PreviewPipe, fast_default
from .few_step import sampling_defaults
from .jobs import JOB_RUNNERS, JobContext, JobResult
from .jobs.edits import load_inversion
from .lora import LoraError, describe, lora_list, run_lora_request
from .methods import METHODS
from .models import ModelBundle, load_model
from .preview import Previewer
from .types import (
    Cancelled,
    EditRequest,
    Event,
    Failed,
    Finished,
    LoadModelRequest,
    LoraRequest,
    LorasChanged,
    ModelInfo,
    ModelLoaded,
    Started,
    Step,
)

log = logging.getLogger(__name__)
Listener = Callable[[Event], None]
FINAL = (Finished, Failed, Cancelled, ModelLoaded, LorasChanged)
LISTENER_GRACE = 5.0  # s the engine waits for a listener to take an event (once per stall)
FINAL_BYTES = 64 * 2**20  # images kept in final events for ``wait`` (the newest always)
INVERSION_BYTES = 256 * 2**20  # inversions kept for re-editing (the newest always)
INTERRUPTED = "interrupted"  # the label of a cancelled job's last x̂₀, decoded (a Step)


class _JobCancelled(Exception):
    pass


def _nbytes(obj, depth: int = 0) -> int:
    """Approximate memory held by arrays and tensors in an event's payload."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if depth > 3:
        return 0
    if isinstance(obj, Mapping):
        return sum(_nbytes(v, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v, depth + 1) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_nbytes(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj))
    return 0


def _event_bytes(ev: Event) -> int:
    if isinstance(ev, Finished):
        return _nbytes(ev.image) + _nbytes(ev.extras)
    return 0


class InversionStore:
    """Inversions kept engine-side behind an id (the GUI holds only the id), within
    ``max_bytes``: the least recently used go first, the newest is always kept. On the CPU, so
    kept inversions hold no device memory. Any thread."""

    GONE = "The inversion is no longer in memory; invert the image again."

    def __init__(self, max_bytes: int = INVERSION_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, tuple[Inversion, int]] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def put(self, inv: Inversion) -> int:
        inv = inv.to("cpu")
        size = _nbytes(inv)
        with self._lock:
            inv_id = next(self._ids)
            self._items[inv_id] = (inv, size)
            total = sum(n for _, n in self._items.values())
            for old in list(self._items)[:-1]:
                if total <= self.max_bytes:
                    break
                total -= self._items.pop(old)[1]
        return inv_id

    def get(self, inv_id: int) -> Inversion:
        with self._lock:
            if inv_id not in self._items:
                raise InputError(self.GONE)
            self._items.move_to_end(inv_id)
            return self._items[inv_id][0]

    def discard(self, inv_id: int) -> None:
        with self._lock:
            self._items.pop(inv_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_STOP = object()  # tells a delivery thread to end now


class _Delivery:
    """One listener's own thread and queue: events arrive in order, off the engine thread.
    The thread ends after ``IDLE`` seconds without events and starts again on the next."""

    IDLE = 2.0

    def __init__(self, fn: Listener):
        self.fn = fn
        self.queue: queue.Queue = queue.Queue()
        self.pending = 0  # events queued and not yet handled
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        _DELIVERIES.add(self)

    def close(self, timeout: float = 5.0) -> None:
        """End the thread once what is queued has been delivered (used at exit)."""
        with self.lock:
            thread = self.thread
            if thread is None:
                return
            self.queue.put((_STOP, None))
        thread.join(timeout)

    def put(self, event: Event | None) -> threading.Event:
        """Queue an event (None: a marker that only reports when the ones before are done)."""
        done = threading.Event()
        with self.lock:
            self.pending += 1
            self.queue.put((event, done))
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="engine-listener", daemon=True
                )
                self.thread.start()
        return done

    def busy(self) -> bool:
        with self.lock:
            return self.pending > 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far has been delivered."""
        return self.put(None).wait(timeout)

    def _run(self) -> None:
        while True:
            try:
                event, done = self.queue.get(timeout=self.IDLE)
            except queue.Empty:
                with self.lock:
                    if self.queue.empty():
                        self.thread = None
                        return
                continue
            if event is _STOP:
                with self.lock:
                    self.thread = None
                return
            try:
                if event is not None:
                    self.fn(event)
            except Exception:  # a broken listener must not kill the engine
                log.exception("engine listener failed")
            finally:
                with self.lock:
                    self.pending -= 1
                done.set()


# Every engine and listener delivery still alive. Their threads are daemons (they must not
# keep a closed app alive), but a daemon thread still running when the interpreter finalizes
# is ended with pthread_exit, and unwinding through torch's C++ frames aborts the process
# ("terminate called without an active exception", exit code 134): seen when a script ended
# during a job, and after test runs whose listener threads were still idling. At exit each
# engine is stopped and its worker joined (a job stops within one model call, a model load,
# which cannot be interrupted, runs out), then every delivery thread is ended and joined.
_ENGINES: weakref.WeakSet = weakref.WeakSet()
_DELIVERIES: weakref.WeakSet = weakref.WeakSet()
EXIT_WAIT = 120.0  # s, at most, per engine


@atexit.register
def _stop_engines_at_exit() -> None:
    for engine in list(_ENGINES):
        engine.shutdown(timeout=EXIT_WAIT)
    for delivery in list(_DELIVERIES):
        delivery.close()


def settle_garbage_collector() -> None:
    """Collect once, then exempt every object alive now from later cyclic collections.

    With a model loaded the interpreter holds ~400 k objects; a full collection walks them
    all in ~0.3 s with the GIL held (measured on the 2-core CPU with the demo model), so
    whichever thread triggers it, the GUI freezes that long. After a load the user waits: the
    old model's garbage goes now, and ``gc.freeze`` moves the rest (the new model, the
    libraries) where later collections do not look, so they walk only what jobs create."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Engine:
    """Run ``EditRequest``s and ``LoadModelRequest``s on one background thread, in order."""

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        listener: Listener | None = None,
        fast: bool | None = None,
    ):
        """``fast``: compile the UNet and VAE decoder in the background after each load
        (``engine.fast``); None: ``fast_default`` (the DIFFUSION_EDITOR_FAST variable, else on
        for CUDA only)."""
        self._listeners: list[_Delivery] = []
        self._queue: deque[tuple[int, EditRequest | LoadModelRequest]] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._cancelled: set[int] = set()
        self._discarded: set[int] = set()  # cancelled jobs whose last x̂₀ nobody will keep
        self._decode_next = False  # a full VAE decode of the next x̂₀ was asked for
        self._running: int | None = None
        self._final: OrderedDict[int, Event] = OrderedDict()
        self._final_bytes = 0
        self._ended: set[int] = set()  # jobs whose final event was emitted
        self._stop = False
        if listener:
            self.add_listener(listener)
        self.bundle: ModelBundle | None = None
        self.denoiser: Denoiser | None = None
        self.previewer: Previewer | None = None
        self.fast_wanted = fast
        self.fast: FastPath | None = None  # the loaded model's fast path, if on
        self.default_device, self.default_dtype = device, dtype
        self.inversions = InversionStore()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        _ENGINES.add(self)
        if model is not None:
            self.load_model(model, device, dtype)

    # ---- public API (any thread) ----------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        self._add_listener(fn)

    def _add_listener(self, fn: Listener) -> _Delivery:
        delivery = _Delivery(fn)
        with self._cv:
            self._listeners = [*self._listeners, delivery]
        return delivery

    def remove_listener(self, fn: Listener) -> None:
        """Stop delivering to ``fn``; events already queued for it are still delivered."""
        with self._cv:
            self._listeners = [d for d in self._listeners if d.fn != fn]

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

    def add_lora(self, path: str, weight: float = 1.0) -> int:
        """Queue fusing a LoRA file into the loaded model (after the jobs before it); its
        final event is ``LorasChanged`` or ``Failed`` (the model then stays as it was)."""
        return self._enqueue(LoraRequest("add", path=str(path), weight=weight))

    def set_lora_weight(self, name: str, weight: float) -> int:
        return self._enqueue(LoraRequest("weight", name=name, weight=weight))

    def remove_lora(self, name: str) -> int:
        """Queue unfusing a LoRA: the weights return bit-exactly to what they were."""
        return self._enqueue(LoraRequest("remove", name=name))

    def clear_loras(self) -> int:
        return self._enqueue(LoraRequest("clear"))

    def submit(self, request: EditRequest, supersede: bool = False) -> int:
        """Queue a job. ``supersede`` drops edit jobs still waiting in the queue."""
        if supersede and not self._stop:
            with self._cv:
                stale = [(j, r) for j, r in self._queue if isinstance(r, EditRequest)]
                for item in stale:
                    self._queue.remove(item)
            for j, _ in stale:
                self._emit(Cancelled(j))
        return self._enqueue(request)

    def cancel(self, job_id: int | None = None, keep_interrupted: bool = True) -> None:
        """Cancel a queued or running job (the running one if ``job_id`` is None).
        ``keep_interrupted=False`` skips decoding its last x̂₀ for an "interrupted" result
        (a superseded live update: nobody keeps it, and the decode would delay the next)."""
        with self._cv:
            job_id = self._running if job_id is None else job_id
            if job_id is None:
                return
            queued = [(j, r) for j, r in self._queue if j == job_id]
            for item in queued:
                self._queue.remove(item)
            if not queued and job_id == self._running:
                self._cancelled.add(job_id)
                if not keep_interrupted:
                    self._discarded.add(job_id)
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
        """Submit and wait; ``on_event`` sees this job's events, in order, on one thread,
        all of them before this returns. For the CLI and tests."""
        box: dict[str, int] = {}
        early: list[Event] = []  # events that came before the job id was known
        lock = threading.Lock()

        def backlog() -> list[Event]:
            with lock:
                out = [e for e in early if e.job_id == box.get("id")]
                early.clear()
            return out

        def relay(ev: Event) -> None:
            with lock:
                if "id" not in box:
                    early.append(ev)
                    return
            for e in [*backlog(), ev]:
                if e.job_id == box["id"] and on_event:
                    on_event(e)

        delivery = self._add_listener(relay)
        try:
            job_id = self.submit(request)
            with lock:
                box["id"] = job_id
            final = self.wait(job_id, timeout)
            if final is not None:
                delivery.flush(timeout)
                for e in backlog():  # the job ended before its id was known here
                    if on_event:
                        on_event(e)
            return final
        finally:
            self.remove_listener(relay)

    def export_inversion(self, inversion_id: int) -> bytes:
        """A kept inversion as the bytes of an inversion file (``Inversion.save``), for a
        project; ``InputError`` if it is no longer kept."""
        buf = io.BytesIO()
        self.inversions.get(inversion_id).save(buf)
        return buf.getvalue()

    def import_inversion(self, data: bytes, name: str = "The inversion") -> int:
        """Keep an inversion read from the bytes of an inversion file; its id. Checked like
        an inversion file (``FileError`` naming ``name`` if damaged or foreign)."""
        return self.inversions.put(load_inversion(io.BytesIO(data), name))

    def discard_inversion(self, inversion_id: int) -> None:
        self.inversions.discard(inversion_id)

    @staticmethod
    def methods() -> list[str]:
        """The ``EditRequest.method`` names this build can run."""
        return sorted(JOB_RUNNERS)

    @property
    def model_info(self) -> ModelInfo | None:
        b = self.bundle
        if b is None:
            return None
        loras = lora_list(b)
        few = sampling_defaults(b.scheduler_config, b.unet.config, b.name, [n for n, _ in loras])
        return ModelInfo(
            b.name,
            str(b.device),
            str(b.dtype).replace("torch.", ""),
            b.prediction_type,
            b.native_size,
            # the model's optional parts, and "inpainting" for a 9-channel UNet (its
            # Resamples default is 1, engine.jobs.edits)
            ("classifier",) * (b.classifier is not None) + ("inpainting",) * b.inpainting,
            few.kind,
            MappingProxyType(dict(few.defaults)),
            loras,
            family=b.family_name,
        )

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel the running job and everything queued (each gets its Cancelled event), and
        stop the worker; jobs submitted later are cancelled at once."""
        with self._cv:
            self._stop = True
            if self._running is not None:
                self._cancelled.add(self._running)
            queued, self._queue = list(self._queue), deque()
            self._cv.notify_all()
        for job_id, _ in queued:
            self._emit(Cancelled(job_id))
        self._thread.join(timeout)
        if self.fast is not None:
            self.fast.close()

    # ---- worker thread ---------------------------------------------------------------------

    def _enqueue(self, request) -> int:
        with self._cv:
            job_id = next(self._ids)
            stopped = self._stop
            if not stopped:
                self._queue.append((job_id, request))
                self._cv.notify_all()
        if stopped:  # still exactly one final event
            self._emit(Cancelled(job_id))
        return job_id

    def _emit(self, event: Event) -> None:
        final = isinstance(event, FINAL)
        with self._cv:  # queued under the lock: every listener sees one order
            if final:
                if event.job_id in self._ended:
                    return  # exactly one final event per job
                self._ended.add(event.job_id)
            handed = [(d.busy(), d.put(event)) for d in self._listeners]
        # wait a little for listeners that keep up; one still on an earlier event is skipped
        deadline = time.monotonic() + LISTENER_GRACE
        for was_busy, done in handed:
            if not was_busy:
                done.wait(max(0.0, deadline - time.monotonic()))
        if final:  # after the listeners, so wait() returns once they have seen it
            with self._cv:
                self._keep_final(event)
                self._cv.notify_all()

    def _keep_final(self, event: Event) -> None:
        """Record a final event for ``wait``; beyond FINAL_BYTES the oldest results keep
        their event but lose their images (called with the lock held)."""
        self._final[event.job_id] = event
        self._final_bytes += _event_bytes(event)
        for old_id in list(self._final)[:-1]:
            if self._final_bytes <= FINAL_BYTES:
                break
            old = self._final[old_id]
            size = _event_bytes(old)
            if size:
                self._final[old_id] = dataclasses.replace(
                    old, image=None, extras=MappingProxyType({})
                )
                self._final_bytes -= size

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return  # shutdown() cancelled what was queued
                job_id, request = self._queue.popleft()
                self._running = job_id
            try:
                with torch.no_grad():
                    self._execute(job_id, request)
            finally:
                with self._cv:
                    self._running = None
                    self._cancelled.discard(job_id)
                    self._discarded.discard(job_id)

    def _execute(self, job_id: int, request) -> None:
        try:
            if isinstance(request, LoadModelRequest):
                self._emit(Started(job_id, "load"))
                self._load(request)
                self._emit(ModelLoaded(job_id, self.model_info))
            elif isinstance(request, LoraRequest):
                self._emit(Started(job_id, "lora"))
                self._change_loras(request)
                self._emit(LorasChanged(job_id, self.model_info))
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
        if self.fast is not None:
            self.fast.close()
        self.bundle = self.denoiser = self.previewer = self.fast = None
        self._release_memory()
        self.bundle, self.denoiser = bundle, Denoiser(bundle)
        self.previewer = Previewer(bundle)
        self.fast = self._start_fast(bundle)
        settle_garbage_collector()

    def _start_fast(self, bundle: ModelBundle) -> FastPath | None:
        """Hook the fast path in and queue its compile; returns at once (the first jobs run
        eagerly until graphs are ready). Any failure here leaves the model eager."""
        wanted = fast_default(bundle.device) if self.fast_wanted is None else self.fast_wanted
        if not wanted:
            return None
        try:
            path = FastPath(bundle)
            path.warm_up()
        except Exception as e:  # the eager model still works: one line, no traceback
            log.warning("The fast path is off for %s: %s", bundle.name, e)
            return None
        return path

    def _change_loras(self, req: LoraRequest) -> None:
        if self.bundle is None:
            raise LoraError("No model is loaded yet; open a model before adding a LoRA.")
        changing = self.fast.weights_changing() if self.fast else contextlib.nullcontext()
        with changing:  # no compile traces the model half-way through a fuse
            run_lora_request(self.bundle, req)
        self.denoiser = Denoiser(self.bundle)  # the text encoder may have changed: no cache

    def _release_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _run_job(self, job_id: int, req: EditRequest) -> None:
        if self.bundle is None:
            raise EngineError("No model is loaded yet; open a model first.")
        runner = JOB_RUNNERS.get(req.method)
        if runner is None:
            raise EngineError(f"The method {req.method!r} is not available in this version.")

        def check_cancel() -> None:
            if job_id in self._cancelled:
                raise _JobCancelled

        inv = req.options.get("inversion")
        if isinstance(inv, int) and not isinstance(inv, bool):  # a kept inversion's id
            inv = self.inversions.get(inv)
            req = dataclasses.replace(req, options={**req.options, "inversion": inv})
        ctx = JobContext(self.bundle, self.denoiser, check_cancel=check_cancel)
        self._emit(Started(job_id, req.method))
        last: list[Progress] = []  # the newest step that showed an x̂₀
        # CUDA with the fast path: a step's preview is handed on once the next step is
        # queued, so the GPU never waits for the host (engine.fast.PreviewPipe)
        cuda = self.fast is not None and self.bundle.device.type == "cuda"
        pipe = PreviewPipe(self.previewer) if cuda else None

        def emit_ready(ready) -> None:
            for p, image in ready:
                self._emit(Step(job_id, p.i, p.n, int(p.t), image, p.label))

        def on_progress(progress: Progress) -> None:
            if progress.x0 is not None:
                last[:] = [progress]
            plain = progress.image is None and progress.mask is None and not self._decode_next
            if pipe is not None and progress.x0 is not None and plain:
                emit_ready(pipe.push(progress))
                return
            if pipe is not None:
                emit_ready(pipe.drain())  # keep the steps in order
            self._emit(self._step_event(job_id, progress))

        busy = self.fast.job() if self.fast is not None else contextlib.nullcontext()
        try:
            with busy:  # no compile starts beside a job
                result: JobResult = drive(runner(ctx, req), on_progress, check_cancel)
        except _JobCancelled:
            if last and METHODS[req.method].inversion != "makes" and job_id not in self._discarded:
                self._emit_interrupted(job_id, last[0])
            raise
        if pipe is not None:
            emit_ready(pipe.drain())
        params = {**req.parameters(), **result.parameters, "model": self.bundle.name}
        if lora_list(self.bundle):
            params["loras"] = describe(self.bundle)  # PNG text: <lora:name:w>, Lora hashes
        extras = dict(result.extras)
        if isinstance(extras.get("inversion"), Inversion):  # kept here; the caller gets its id
            inv = extras.pop("inversion")
            extras["inversion_id"] = self.inversions.put(inv)
            extras["inversion_summary"] = inv.summary()
        self._emit(Finished(job_id, result.image, params, extras))

    def _emit_interrupted(self, job_id: int, p: Progress) -> None:
        """Before a cancelled job's Cancelled event: its last x̂₀ through the real decoder,
        as a Step labelled "interrupted" (step i of n), so the receiver can keep it as a
        result, as A1111's Interrupt keeps the current image. Costs one VAE decode."""
        try:
            image = self.bundle.decode(p.x0[:1])
        except Exception:  # nothing to keep is better than a failed cancel
            log.exception("decoding the interrupted job's x̂₀ failed")
            return
        if np.isfinite(image).all():
            self._emit(Step(job_id, p.i, p.n, int(p.t), image, INTERRUPTED))

    def _step_event(self, job_id: int, p: Progress) -> Step:
        preview, label = p.image, p.label
        if preview is None and p.x0 is not None:
            if self._decode_next:
                self._decode_next = False
                preview = self.bundle.decode(p.x0[:1])
                label = f"{label} (decoded)".strip()
            else:
                preview = self.previewer(p.x0)
        mask = None if p.mask is None else p.mask[0, 0].float().cpu().numpy()
        return Step(job_id, p.i, p.n, int(p.t), preview, label, mask)
