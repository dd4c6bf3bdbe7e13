"""Engine events → Qt signals. The only place where the engine thread meets the GUI.

The engine calls our listener *on its own thread*; we re-emit each event through a signal
connected with ``Qt.QueuedConnection``, so every slot runs on the GUI thread. The bridge
remembers which edit job is current and drops events from stale ones (a cancelled job's
late steps, a superseded request).
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal, Slot

from engine import (
    Cancelled,
    EditRequest,
    Engine,
    Event,
    Failed,
    Finished,
    InputError,
    LorasChanged,
    ModelLoaded,
    Started,
    Step,
)


class EngineBridge(QObject):
    started = Signal(object)  # Started
    step = Signal(object)  # Step
    finished = Signal(object)  # Finished
    failed = Signal(object)  # Failed (an edit job)
    load_failed = Signal(object)  # Failed (a model load)
    cancelled = Signal(object)  # Cancelled
    model_loaded = Signal(object)  # ModelLoaded
    # live mode's jobs run beside the edit job's slot: a newer one replaces the older
    live_finished = Signal(object)  # Finished
    live_ended = Signal(object)  # Failed or Cancelled
    loras_changed = Signal(object)  # LorasChanged: the model's info with its LoRAs now
    lora_failed = Signal(object)  # Failed (the model stays as it was)
    _event = Signal(object)  # engine thread → GUI thread

    def __init__(self, engine: Engine, parent=None):
        super().__init__(parent)
        self.engine = engine
        self.job_id: int | None = None  # the current edit job
        self.load_id: int | None = None  # the current model load
        self.live_id: int | None = None  # the current live-mode update
        self.lora_ids: set[int] = set()  # LoRA changes not answered yet
        # the loaded model as the last ModelLoaded said (the GUI never reads the engine's
        # own state, which the engine thread may be changing)
        self.model_info = engine.model_info
        self._event.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)
        engine.add_listener(self._listener)

    # ---- any thread ----------------------------------------------------------------------

    def _listener(self, event: Event) -> None:
        self._event.emit(event)  # queued: delivered on the GUI thread

    # ---- GUI thread ----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.job_id is not None

    def submit(self, request: EditRequest) -> int:
        """Run a request, superseding anything still queued; the old job is cancelled."""
        if self.job_id is not None:
            self.engine.cancel(self.job_id)
        self.job_id = self.engine.submit(request, supersede=True)
        return self.job_id

    def cancel(self) -> None:
        if self.job_id is not None:
            self.engine.cancel(self.job_id)

    def submit_live(self, request: EditRequest) -> int:
        """Run a live-mode update, cancelling the previous one (a stale update is stopped,
        never queued); it queues behind an edit job without superseding it."""
        self.cancel_live()
        self.live_id = self.engine.submit(request)
        return self.live_id

    def cancel_live(self) -> None:
        """Stop the live update (its partial picture is not wanted) and forget it."""
        if self.live_id is not None:
            self.engine.cancel(self.live_id, keep_interrupted=False)
            self.live_id = None

    def forget(self) -> None:
        """Cancel the current job and drop every later event of it (the document it was
        made for is gone: a result arriving now would land on another picture)."""
        if self.job_id is not None:
            self.engine.cancel(self.job_id)
            self.job_id = None

    def load_model(self, spec: str) -> int:
        self.load_id = self.engine.load_model(spec)
        return self.load_id

    def change_loras(self, action: str, path: str = "", name: str = "", weight: float = 1.0):
        """Add a LoRA file, set a LoRA's weight, remove one or "clear" them (between jobs)."""
        e = self.engine
        job = {
            "add": lambda: e.add_lora(path, weight),
            "weight": lambda: e.set_lora_weight(name, weight),
            "remove": lambda: e.remove_lora(name),
            "clear": e.clear_loras,
        }[action]()
        self.lora_ids.add(job)
        return job

    def methods(self) -> list[str]:
        return self.engine.methods()

    # inversions stay in the engine; the document holds only their ids

    def export_inversion(self, inversion_id: int) -> bytes | None:
        """The inversion's file bytes, for a project; None if the engine no longer keeps it."""
        try:
            return self.engine.export_inversion(inversion_id)
        except InputError:
            return None

    def import_inversion(self, data: bytes, name: str) -> int:
        """Keep an inversion read from a project; its id (``FileError`` naming ``name``)."""
        return self.engine.import_inversion(data, name)

    def discard_inversion(self, inversion_id: int) -> None:
        self.engine.discard_inversion(inversion_id)

    def detach(self) -> None:
        self.engine.remove_listener(self._listener)

    @Slot(object)
    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, ModelLoaded):  # whoever asked for the load
            self.model_info = ev.info
        if ev.job_id == self.load_id:
            if isinstance(ev, ModelLoaded):
                self.load_id = None
                self.model_loaded.emit(ev)
            elif isinstance(ev, (Failed, Cancelled)):
                self.load_id = None
                msg = ev if isinstance(ev, Failed) else Failed(ev.job_id, "Loading was cancelled.")
                self.load_failed.emit(msg)
            return
        if ev.job_id in self.lora_ids:
            if isinstance(ev, LorasChanged):
                self.model_info = ev.info
                self.loras_changed.emit(ev)
            elif isinstance(ev, (Failed, Cancelled)):
                msg = (
                    ev
                    if isinstance(ev, Failed)
                    else Failed(ev.job_id, "The LoRA change was cancelled.")
                )
                self.lora_failed.emit(msg)
            if not isinstance(ev, (Started, Step)):
                self.lora_ids.discard(ev.job_id)
            return
        if ev.job_id == self.live_id:
            if isinstance(ev, (Finished, Failed, Cancelled)):
                self.live_id = None
                (self.live_finished if isinstance(ev, Finished) else self.live_ended).emit(ev)
            return
        if ev.job_id != self.job_id:
            return  # stale: a job we no longer care about
        if isinstance(ev, Started):
            self.started.emit(ev)
        elif isinstance(ev, Step):
            self.step.emit(ev)
        elif isinstance(ev, (Finished, Failed, Cancelled)):
            self.job_id = None
            signal = {Finished: self.finished, Failed: self.failed, Cancelled: self.cancelled}
            signal[type(ev)].emit(ev)
