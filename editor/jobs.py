"""The editor's one job controller: run, step, finish, fail, cancel; results.

``JobController.run`` snapshots the document into a frozen request and submits it through
the bridge; bridge signals (already on the GUI thread, stale jobs dropped) drive the progress
bar, the preview layer and the history. The controller alone knows the running job
(``RunningJob``); the window owns one and forwards its menu actions to it. The GUI never
waits on the engine.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import Qt

from engine import EditRequest, imageops
from engine.engine import INTERRUPTED
from engine.methods import METHODS as ENGINE_METHODS
from engine.methods import finds_blend_region

from . import project
from .document import image_key
from .methods import (
    ATTENTION,
    COMMON,
    MASKED,
    METHODS,
    PER_METHOD,
    NeedsInput,
    Param,
    SettingsError,
    build_request,
    check_setting,
    random_seed,
    seed_matters,
    set_value,
    word_key,
)

SEED_RANGE = 2**31  # the seed box's: a batch's seeds wrap around within it


@dataclass
class RunningJob:
    """What the controller knows of the job it submitted."""

    ui_method: str  # the panel's method
    method: str  # the engine's (a stage of a multi-step panel method)
    job_id: int | None = None
    mask: np.ndarray | None = None  # only the masked area changes: its preview shows there
    source_key: str = ""  # image_key of the picture the job was made from
    started: float = field(default_factory=time.monotonic)
    state: str = "waiting"  # waiting → running (first step) → gone when it ends
    options: dict = field(default_factory=dict)  # plain options sent, kept in the history
    request: EditRequest | None = None
    # only-masked inpainting works on this crop (y0, x0, y1, x1); previews cover only it
    box: tuple[int, int, int, int] | None = None
    interrupted: object = None  # the engine's decoded last x̂₀ of a cancelled job (a Step)
    batch: list = field(default_factory=list)  # requests still to run after this one
    jobs: int = 1  # how many jobs this Run makes (the batch count)


def batch_note(k: int, jobs: int, per_job: int) -> str:
    """Where job ``k`` (1-based) of a Run of ``jobs`` stands: "picture 2 of 4", or with
    several pictures per job "pictures 3–4 of 8"; nothing for a single picture."""
    if per_job == 1:
        return f"picture {k} of {jobs}" if jobs > 1 else ""
    return f"pictures {(k - 1) * per_job + 1}–{k * per_job} of {jobs * per_job}"


class JobController:
    """Owns the running job (by composition: the window holds one). Talks to the window's
    document, bridge, canvas and panels; never to the engine directly."""

    def __init__(self, win):
        self.win = win
        self.current: RunningJob | None = None
        self._preview_alpha: np.ndarray | None = None
        # the last attention-controlled result's word → cross-attention map (heat maps),
        # and for words the edit left out, their map before the edit
        self.attention_maps: dict[str, np.ndarray] = {}
        self.source_maps: dict[str, np.ndarray] = {}
        win.doc.reset.connect(self._forget_maps)  # they belonged to the old image
        b = win.bridge
        b.started.connect(self._on_started)
        b.step.connect(self._on_step)
        b.finished.connect(self._on_finished)
        b.failed.connect(self._on_failed)
        b.cancelled.connect(self._on_cancelled)

    @property
    def busy(self) -> bool:
        return self.win.bridge.busy

    # ---- jobs -----------------------------------------------------------------------------

    def run(self, method: str, stage: int = -1) -> int | None:
        win, doc = self.win, self.win.doc
        if win.bridge.busy or win.bridge.load_id is not None:
            win.status("Busy: wait for the current job or cancel it (Esc).")
            return None
        if win.bridge.model_info is None:
            win.show_error("No model is loaded; choose one in the Model menu.")
            return None
        if not doc.settings.get("seed_locked") and METHODS[method].seeded:
            doc.update_settings(seed=random_seed())  # (Edit prompt replays the image's seed)
        try:
            request = build_request(doc, method, stage, win.bridge.model_info.parts)
        except NeedsInput as e:
            win.show_error(str(e))
            return None
        count = int(doc.settings.get("batch_count", 1)) if seed_matters(request) else 1
        if stage not in (-1, len(METHODS[method].engine) - 1):
            count = 1  # a preparation stage (Make mask) makes one
        size = int(request.options.get("batch_size", 1))  # pictures per job: seeds follow on
        batch = [
            dataclasses.replace(request, seed=(request.seed + k * size) % SEED_RANGE)
            for k in range(count)
        ]
        win.banner_host.hide()
        win.live.hold()  # a Run goes first; the live view catches up after it
        return self._submit(method, batch[0], batch[1:], count)

    def _submit(self, method: str, request: EditRequest, rest: list, jobs: int) -> int:
        """Run one request of a Run's ``jobs`` (``rest`` still to come)."""
        win = self.win
        masked = request.method in MASKED and request.mask is not None
        job = RunningJob(method, request.method, mask=request.mask if masked else None)
        job.request, job.batch, job.jobs = request, rest, jobs
        if request.method == "repaint" and masked and request.options.get("only_masked"):
            pad = request.options.get(
                "padding", ENGINE_METHODS["repaint"].options["padding"].default
            )
            job.box = imageops.crop_box(request.mask > 0, pad)
        if request.method == "invert":
            job.source_key = image_key(request.image)
        if request.method in ATTENTION:  # what the engine's parameters leave out (control…)
            job.options = {
                k: v
                for k, v in request.options.items()
                if k != "inversion" and isinstance(v, str | int | float | bool)
            }
        self.current, self._preview_alpha = job, None
        win.canvas.show_heat(None)
        win.history_panel.select(None)
        win.history_panel.compare.setChecked(False)
        win.canvas.set_layer_visible("preview", True)
        note = batch_note(jobs - len(rest), jobs, int(request.options.get("batch_size", 1)))
        text = f"{request.method}{' · ' + note if note else ''}: waiting…"
        win.prompt_panel.set_busy(True, text, self._phases(request), note)
        job.job_id = win.bridge.submit(request)
        return job.job_id

    @staticmethod
    def _phases(request: EditRequest) -> int:
        """How many model-call phases the job runs one after the other (one progress bar
        spans them): DiffEdit without a mask finds one first; null-text inversion inverts
        and optimises (the fast setting's second pass, for a reconstruction its check finds
        visibly short, is rare and runs at the bar's end); an attention-
        controlled edit whose blend region is DiffEdit's finds it first (Edit prompt without
        the picture replays the generation before that)."""
        if request.method == "diffedit" and request.mask is None:
            return 2
        if request.method in ("reedit", "edit_generated"):
            specs = ENGINE_METHODS[request.method].options

            def option(key):
                return request.options.get(key, specs[key].default)

            finds = finds_blend_region(option, request.mask is not None)
            if request.method == "reedit":
                return 2 if finds and option("control") == "p2p" else 1
            return (2 if request.image is not None else 3) if finds else 1
        if request.method == "invert":
            inversion = str(request.options.get("inversion", "null_text"))
            return 2 if inversion.startswith("null") else 1
        return 1

    def cancel(self) -> None:
        if self.win.bridge.busy:
            self.win.bridge.cancel()
            self.win.status("Cancelling…")

    def drop(self) -> None:
        """A new document replaces the one the running job was made for: cancel it and
        ignore whatever it still sends."""
        if self.win.bridge.busy:
            self.win.bridge.forget()
            self._on_cancelled(None)

    def _end(self, text: str) -> RunningJob | None:
        job, self.current = self.current, None
        self.win.prompt_panel.set_busy(False, text)
        self.win.canvas.show_preview(None)
        self.win.canvas.show_mask_preview(None)
        return job

    def _on_started(self, ev) -> None:
        self.win.prompt_panel.show_started(f"{ev.kind}…")

    def _on_step(self, ev) -> None:
        if ev.label == INTERRUPTED:  # the cancelled job's last x̂₀, decoded: kept on cancel
            if self.current is not None:
                self.current.interrupted = ev
            return
        if self.current is not None:
            self.current.state = "running"
        self.win.prompt_panel.show_step(ev.i, ev.n, ev.label)
        if ev.preview is not None:
            box = self.current.box if self.current is not None else None
            self.win.canvas.show_preview(self._masked_preview(ev.preview), box)
        mask = getattr(ev, "mask", None)
        if mask is not None and self.current is not None and self.current.method in ATTENTION:
            self.win.canvas.show_mask_preview(mask)  # the local-blend mask as it forms

    def _masked_preview(self, preview: np.ndarray) -> np.ndarray:
        """With a mask, only the masked area will change: show x̂₀ only there (RGBA)."""
        mask = self.current.mask if self.current is not None else None
        if mask is None or preview.ndim != 3 or preview.shape[2] != 3:
            return preview
        hw = preview.shape[:2]
        if self._preview_alpha is None or self._preview_alpha.shape != hw:
            if self.current.box is not None:  # only masked: the preview is of the crop
                y0, x0, y1, x1 = self.current.box
                mask = mask[y0:y1, x0:x1]
            self._preview_alpha = imageops.resize(mask, hw)
        return np.dstack([preview, self._preview_alpha])

    def _on_finished(self, ev) -> None:
        win, doc = self.win, self.win.doc
        started = self.current.started if self.current else time.monotonic()
        job = self._end(f"done in {time.monotonic() - started:.1f} s")
        kind = job.method if job else ev.parameters.get("method")
        if kind == "diffedit_mask":
            mask = ev.extras.get("mask")
            if mask is not None and mask.shape == doc.mask.shape:
                doc.set_mask(mask, "DiffEdit mask")
                win.canvas.set_layer_visible("mask", True)
                win.status("DiffEdit mask is in the mask layer: touch it up, then Run.")
            return
        if kind == "invert":
            doc.inversion = ev.extras.get("inversion_id")  # the inversion stays in the engine
            doc.inversion_source = job.source_key if job else ""
            win.status("Inverted: change the prompt and Run to re-edit.")
        if ev.image is None or ev.image.shape != doc.image.shape:
            return  # the document changed size while the job ran
        parameters = {**(job.options if job else {}), **dict(ev.parameters)}
        parameters.update(self._resized(ev.image.shape[:2], job))
        entry = doc.add_result(ev.image, project.plain(parameters))
        for more in ev.extras.get("batch", ()):  # the other pictures of the pass
            doc.add_result(more["image"], project.plain({**parameters, "seed": more["seed"]}))
        win.history_panel.select(entry)
        if ev.extras.get("notice"):  # what the engine did of its own accord
            win.status(ev.extras["notice"], 10000)
        if kind in ATTENTION:
            self._attention_result(ev)
        if job is not None and job.batch:  # the batch's next picture
            self._submit(job.ui_method, job.batch[0], job.batch[1:], job.jobs)

    def _resized(self, hw: tuple[int, int], job: RunningJob | None) -> dict:
        """How the result reached the canvas: made at the model's working size and resized
        (said in its tooltip: "resized: upscaled from 128x128 to 512x512")."""
        info = self.win.bridge.model_info
        if info is None:
            return {}
        if job is not None and job.box is not None:  # only masked: the crop was resized
            y0, x0, y1, x1 = job.box
            hw = (y1 - y0, x1 - x0)
        note = imageops.resize_note(hw, info.native_size, 8)
        return {"resized": note} if note else {}

    def _attention_result(self, ev) -> None:
        """Keep the word maps for the heat map; an empty mask layer takes the blend mask
        (one undoable change: touch it up and Run again, a painted mask replaces the blend)."""
        win, doc = self.win, self.win.doc
        maps = ev.extras.get("attention_maps") or {}
        self.attention_maps = {str(k): np.asarray(v, np.float32) for k, v in maps.items()}
        maps = ev.extras.get("source_attention_maps") or {}
        self.source_maps = {str(k): np.asarray(v, np.float32) for k, v in maps.items()}
        blend = ev.extras.get("blend_mask")
        if blend is None or blend.shape != doc.mask.shape or doc.mask.any():
            return
        if doc.set_mask(np.asarray(blend, np.uint8), "Blend mask"):
            win.canvas.set_layer_visible("mask", True)
            win.status(
                "The blend mask is in the mask layer: touch it up and Run again (a painted "
                "mask replaces the blend), or undo it (Ctrl+Z)."
            )

    def show_word(self, text: str) -> None:
        """The heat map of the word(s) selected in the prompt, from the last re-edit's
        attention maps; no selection hides it."""
        win = self.win
        key = word_key(text)
        if not key:
            win.canvas.show_heat(None)
            if win.statusBar().currentMessage().startswith("Attention of"):
                win.statusBar().clearMessage()
            return
        if not self.attention_maps:
            win.canvas.show_heat(None)
            win.status("No attention maps yet: run Invert & re-edit or Edit prompt first.")
            return
        by_key = {word_key(k): m for k, m in self.attention_maps.items()}
        found = [w for w in key.split() if w in by_key]
        before = {word_key(k): m for k, m in self.source_maps.items()}
        left_out = [w for w in key.split() if w in before and w not in by_key]
        if found:
            win.canvas.show_heat(np.maximum.reduce([by_key[w] for w in found]))
            win.status(f"Attention of “{' '.join(found)}” in the last result", 0)
        elif left_out:  # e.g. a word weighted 0: where it was
            win.canvas.show_heat(np.maximum.reduce([before[w] for w in left_out]))
            win.status(
                f"Where “{' '.join(left_out)}” was before the last edit (the edit left it out)",
                0,
            )
        else:
            win.canvas.show_heat(None)
            known = ", ".join(sorted(by_key))
            win.status(f"No attention map for “{text}” (the last result's words: {known}).")

    def _forget_maps(self) -> None:
        self.attention_maps, self.source_maps = {}, {}

    def _on_failed(self, ev) -> None:
        self._end("failed")
        self.win.show_error(ev.message)

    def _on_cancelled(self, ev) -> None:
        job = self._end("cancelled")
        entry = self._keep_interrupted(job) if ev is not None else None
        if entry is None:
            self.win.status("Cancelled; nothing was changed.")
            return
        self.win.history_panel.select(entry)
        self.win.status(
            f"Cancelled: the picture as it was at {entry.parameters['interrupted']} is under "
            "Results (Apply to use it, Discard to drop it)."
        )

    def _keep_interrupted(self, job: RunningJob | None):
        """A cancelled job's last prediction as a result marked "interrupted at step k/n"
        (as A1111's Interrupt keeps the current image); not applied. Outside the job's mask
        (and an only-masked crop) the pixels are the picture's. None if there is none."""
        doc = self.win.doc
        if job is None or job.interrupted is None or job.request is None:
            return None
        req, ev = job.request, job.interrupted
        if req.image is not None:
            original = imageops.composite_strokes(req.image, req.strokes)
        else:
            original = None
        if original is None or original.shape != doc.image.shape:
            if req.method not in ("generate", "edit_generated"):
                return None
            original = np.zeros(doc.image.shape, np.uint8)
        image = original.copy()
        y0, x0, y1, x1 = job.box or (0, 0, *original.shape[:2])
        part = imageops.resize(np.ascontiguousarray(ev.preview), (y1 - y0, x1 - x0))
        if job.mask is not None:
            mask = imageops.mask_to_float(job.mask, original.shape[:2])[y0:y1, x0:x1]
            part = imageops.composite(original[y0:y1, x0:x1], part, mask)
        image[y0:y1, x0:x1] = part
        params = {**job.options, **req.parameters(), "interrupted": f"step {ev.i}/{ev.n}"}
        if req.method == "generate":
            params["size"] = f"{doc.size[1]}x{doc.size[0]}"
        return doc.add_result(image, project.plain(params))

    # ---- results --------------------------------------------------------------------------

    def apply_result(self, entry) -> None:
        win = self.win
        if entry.image.shape != win.doc.image.shape:
            win.show_error("This result was made for an image of another size.")
            return
        win.doc.apply_result(entry)  # the image now carries the entry's parameters
        win.history_panel.select(None)
        # the Apply button is disabled now: keep the focus off the form's fields (a typed
        # key must not change Steps), on the canvas, where the keyboard shortcuts act
        win.canvas.setFocus(Qt.FocusReason.OtherFocusReason)
        win.status(f"Applied {entry.title} (Ctrl+Z to undo)")

    def rerun(self, entry) -> None:
        p = entry.parameters
        keys = ("prompt", "negative_prompt", "steps", "guidance", "strength", "seed")
        try:  # a result's parameters may come from a project file: checked like settings
            changes = {k: check_setting(k, p[k]) for k in keys if k in p}
        except SettingsError as e:
            self.win.show_error(f"This result's settings cannot be re-run: {e}")
            return
        ui = next((k for k, m in METHODS.items() if p.get("method") in m.engine), None)
        if ui:
            changes["method"] = ui
        target = ui or self.win.prompt_panel.current_method()
        for key in PER_METHOD:  # the method's own value
            if key in changes:
                set_value(self.win.doc, target, Param.of(key, COMMON[key], False), changes.pop(key))
        self.win.doc.update_settings(**changes, seed_locked=True)
        self.run(target)
