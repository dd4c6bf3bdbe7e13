"""An inversion survives in the project file: open a PNG, Invert, save, reopen in a new window
after the engine forgot everything, and re-edit without inverting again. The document holds
only the engine's id; a damaged inversion member is a clean error that changes nothing."""

import io
import zipfile

import numpy as np
import pytest
from helpers import choose, click_and_wait, sent_requests, set_prompt
from PIL import Image
from PySide6.QtCore import Qt
from tensor_walk import tensors_in

from editor import project
from engine import EditRequest, Finished

LEFT = Qt.MouseButton.LeftButton


def _image():
    return np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _png(tmp_path):
    path = tmp_path / "house.png"
    Image.fromarray(_image()).save(path)
    return str(path)


@pytest.mark.slow
def test_invert_save_reopen_after_a_restart_and_reedit_without_inverting(
    make_window, engine, qtbot, tmp_path
):
    win = make_window()
    assert win.open_path(_png(tmp_path))
    # no local blend: its mask would fill the mask layer, and the re-edit after reopening
    # would then edit inside that mask, not as the first re-edit did
    choose(win, "reedit", qtbot, source_prompt="a house", inversion="ddim", local_blend=False)
    win.doc.update_settings(steps=3, guidance=2.0)
    ev = click_and_wait(qtbot, win, win.prompt_panel.prep)  # Invert
    assert not tensors_in(dict(ev.extras))  # only an id and plain values cross to the GUI
    assert isinstance(win.doc.inversion, int) and not tensors_in(vars(win.doc))
    set_prompt(win, qtbot, "a red house")
    before = click_and_wait(qtbot, win, win.prompt_panel.run).image  # re-edit here first
    saved = str(tmp_path / "house.deproj")
    win.ask_save_path = lambda *a, **k: saved
    assert win.save_project()
    with zipfile.ZipFile(saved) as z:
        assert project.INVERSION_MEMBER in z.namelist()
    engine.inversions.clear()  # what a restart leaves: the engine keeps no inversion

    other = make_window()
    sent = sent_requests(other)
    assert other.open_path(saved), other.banner.text()
    assert isinstance(other.doc.inversion, int) and not other.doc.is_modified()
    choose(other, "reedit", qtbot)
    set_prompt(other, qtbot, "a red house")
    after = click_and_wait(qtbot, other, other.prompt_panel.run)
    assert [r.method for r in sent] == ["reedit"]  # no new Invert
    assert after.parameters["inversion_prompt"] == "a house"
    assert np.array_equal(after.image, before)  # the same inversion, the same re-edit


@pytest.mark.slow
def test_a_crash_after_invert_recovers_the_inversion_too(make_window, engine, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    win = make_window()
    assert win.open_path(_png(tmp_path))
    # no local blend: its mask would fill the mask layer, and the re-edit after reopening
    # would then edit inside that mask, not as the first re-edit did
    choose(win, "reedit", qtbot, source_prompt="a house", inversion="ddim", local_blend=False)
    win.doc.update_settings(steps=3, guidance=2.0)
    click_and_wait(qtbot, win, win.prompt_panel.prep)  # Invert
    set_prompt(win, qtbot, "a red house")
    before = click_and_wait(qtbot, win, win.prompt_panel.run).image
    assert win.autosaver.save_now(wait=True)
    win.shutdown(clean=False)  # what a crash leaves: the autosave and its session file
    engine.inversions.clear()  # and the new process's engine keeps no inversion

    other = make_window()
    other.ask = lambda *a, **k: QMessageBox.StandardButton.Yes  # "Recover unsaved work?"
    assert other.offer_recovery()
    assert isinstance(other.doc.inversion, int)
    sent = sent_requests(other)
    choose(other, "reedit", qtbot)
    set_prompt(other, qtbot, "a red house")
    after = click_and_wait(qtbot, other, other.prompt_panel.run)
    assert [r.method for r in sent] == ["reedit"]  # no new Invert
    assert np.array_equal(after.image, before)


def _project_with_inversion(engine, tmp_path) -> str:
    """A project whose inversion is a real one, written the way the editor writes it."""
    from editor.document import Document, image_key

    image = _image()
    ev = engine.run(EditRequest("invert", prompt="a house", image=image, steps=2), timeout=120)
    assert isinstance(ev, Finished), ev
    doc = Document(image)
    doc.inversion, doc.inversion_source = ev.extras["inversion_id"], image_key(image)
    path = str(tmp_path / "good.deproj")
    project.save_project(doc, path, engine.export_inversion(doc.inversion))
    return path


def _rewrite(src: str, dst: str, change) -> str:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with open(dst, "wb") as f:
        f.write(buf.getvalue())
    return dst


def _meta(change):
    import json

    def edit(members):
        meta = json.loads(members["project.json"])
        change(meta)
        members["project.json"] = json.dumps(meta).encode()

    return edit


DAMAGE = {
    "truncated": lambda m: m.update({"inversion.pt": m["inversion.pt"][:1000]}),
    "not an inversion": lambda m: m.update({"inversion.pt": b"PK\x03\x04 garbage"}),
    "a PNG instead": lambda m: m.update({"inversion.pt": m["image.png"]}),
    "missing": lambda m: m.pop("inversion.pt"),
    "no file named": _meta(lambda meta: meta.update({"inversion": {"image_key": "x"}})),
    "no image named": _meta(lambda meta: meta["inversion"].pop("image_key")),
    "not a table": _meta(lambda meta: meta.update({"inversion": 7})),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_inversion_member_is_a_clean_error_and_changes_nothing(
    window, engine, tmp_path, damage
):
    good = _project_with_inversion(engine, tmp_path)
    bad = _rewrite(good, str(tmp_path / "bad.deproj"), DAMAGE[damage])
    doc = window.doc
    doc.inversion, doc.inversion_source = 12345, "kept"
    image, kept = doc.image.copy(), len(engine.inversions._items)
    assert not window.open_path(bad)
    assert window.banner_host.isVisible() and "bad.deproj" in window.banner.text()
    assert np.array_equal(doc.image, image) and doc.project_path is None
    assert (doc.inversion, doc.inversion_source) == (12345, "kept")
    assert len(engine.inversions._items) == kept  # nothing imported
    assert window.open_path(good)  # the undamaged project opens, with its inversion
    assert isinstance(doc.inversion, int) and doc.inversion != 12345


def test_cancelling_the_open_keeps_no_imported_inversion(window, engine, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    good = _project_with_inversion(engine, tmp_path)
    window.doc.mark_dirty()  # unsaved work: opening asks first, and the user cancels
    window.ask = lambda *a, **k: QMessageBox.StandardButton.Cancel
    kept = set(engine.inversions._items)
    assert not window.open_path(good)
    assert set(engine.inversions._items) == kept and window.doc.project_path is None
