"""The screenshot script runs end to end (offscreen here: it falls back to grabbing the widget)."""

import numpy as np
import pytest
from PIL import Image
from PySide6.QtWidgets import QApplication

from editor.screenshots import SIZE, Shooter, photo


def test_the_photo_is_a_512px_demo_world_render():
    img = photo()
    assert img.shape == (512, 512, 3) and img.std() > 20  # a scene, not a flat colour


@pytest.mark.slow
def test_screenshots_are_taken_mid_job_and_after_the_mask(qtbot, engine, data_dir, tmp_path):
    s = Shooter(QApplication.instance(), tmp_path, "builtin:tiny", engine=engine)
    s.steps = 6
    try:
        s.sdedit_live()
        assert s.win.doc.history  # the job went on to finish after the mid-job shot
        s.diffedit_mask()
        assert s.win.doc.mask.any()
    finally:
        s.close()
    for name in ("sdedit-live-preview.png", "diffedit-mask.png"):
        assert (tmp_path / name).stat().st_size < 300_000
        assert_window_shot(tmp_path / name)


def assert_window_shot(path):
    """A grab of the whole window, not a blank one."""
    with Image.open(path) as im:
        assert im.size == SIZE
        assert np.asarray(im.convert("RGB")).std() > 20


@pytest.mark.slow
def test_the_guides_flows_are_shot_too(qtbot, engine, data_dir, tmp_path):
    s = Shooter(QApplication.instance(), tmp_path, "builtin:tiny", engine=engine)
    s.steps = 4
    try:
        s.new_document()
        assert s.win.doc.size != (512, 768)  # the dialog was cancelled
        s.generate_batch()
        seeds = [e.parameters["seed"] for e in s.win.doc.history]
        assert seeds == [11, 12, 13, 14]
        s.edit_prompt()
        edit = s.win.doc.history[-1].parameters
        assert edit["method"] == "edit_generated" and edit["source_prompt"] != edit["prompt"]
        s.interrupted()
        assert s.win.doc.history[-1].parameters["interrupted"].startswith("step ")
        s.inpaint_only_masked()
        assert "crop" in s.win.doc.history[-1].parameters
        s.invert_reedit()
        assert [e.parameters["method"] for e in s.win.doc.history] == ["invert", "reedit"]
        s.classifier_guidance()  # tiny ships no classifier: not offered, no shot
        s.live_mode()
        assert not s.win.live.enabled  # (it waited for the update after the strokes)
    finally:
        s.close()
    assert not (tmp_path / "classifier-guidance.png").exists()
    names = ("new-document.png", "generate-batch.png", "edit-prompt.png", "interrupted.png")
    names += ("inpaint-only-masked.png",)
    for name in (*names, "invert-reedit.png", "live-mode.png"):
        assert_window_shot(tmp_path / name)
