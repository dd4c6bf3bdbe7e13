"""Drives a real ``python -m editor`` process for test_crash_recovery (run through the
DIFFUSION_EDITOR_TEST_HOOK variable, on the GUI thread, with ``win`` in scope).

``CRASH_PHASE`` says what to do; every report is one line ``EVENT {json}`` on stdout. The
test kills the process with SIGKILL after the event it waits for."""

import hashlib
import json
import os

import numpy as np
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMessageBox

Btn = QMessageBox.StandardButton
win = globals()["win"]  # noqa: F821 (given by the hook runner)
doc = win.doc
phase = os.environ["CRASH_PHASE"]
project_path = os.environ["CRASH_PROJECT"]


def report(event, **fields):
    print("EVENT", json.dumps({"event": event, **fields}), flush=True)


def digest(arr):
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def state():
    return {
        "image": digest(doc.image),
        "mask": int((doc.mask > 0).sum()),
        "strokes": int((doc.strokes[..., 3] > 0).sum()),
        "project_path": doc.project_path,
        "title": win.windowTitle(),
    }


def edit(rows):
    mask = doc.mask.copy()
    mask[rows] = 255
    doc.set_mask(mask, "paint")
    strokes = doc.strokes.copy()
    strokes[rows, :20] = [255, 0, 0, 255]
    doc.replace_layer("strokes", strokes, "stroke")


def after_next_autosave(event):
    def saved(_path):
        QTimer.singleShot(0, win, lambda: report(event, **state()))

    win.autosaver.saved.connect(saved)


questions = []


def answer(title, text, *a):
    questions.append(text)
    return Btn.Yes if title.startswith("Recover") else Btn.Discard


win.ask = answer
win.ask_save_path = lambda *a: project_path

if phase == "edit":  # the photo is open: edit it, wait for the autosave (then: SIGKILL)

    def boom():
        raise ValueError("a slot failed on purpose")

    QTimer.singleShot(0, boom)  # an exception in a slot reaches the banner
    QTimer.singleShot(50, lambda: report("banner", text=win.banner.text()))
    edit(slice(10, 30))
    after_next_autosave("autosaved")

elif phase == "recover_save_edit":  # recovery answered Yes; save; idle; edit; autosave

    def idle_then_edit():
        report("idle", **state())
        edit(slice(40, 60))
        after_next_autosave("autosaved")

    def then():
        report("recovered", questions=questions, **state())
        win.save_project()
        report("saved", **state())
        QTimer.singleShot(1000, idle_then_edit)  # five autosave periods with nothing to save

    QTimer.singleShot(0, lambda: QTimer.singleShot(0, then))  # after the recovery check

elif phase == "recover_and_quit":

    def then():
        report("recovered", questions=questions, **state())
        doc.mark_saved()  # a clean exit; nothing to save
        win.close()

    QTimer.singleShot(0, lambda: QTimer.singleShot(0, then))

elif phase == "quit_at_once":  # closed while the model is still loading
    report("loading", loaded=win.bridge.model_info is not None)
    QTimer.singleShot(0, win.close)
