"""Issue 12 on the editor side: errors reach the user, opening is all-or-nothing, export
writes the right pixels and parameters, autosave and recovery never lose newer work, saves
leave nothing behind, and results are bounded by bytes."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QPushButton

from editor import document, files, project
from editor.jobs import RunningJob

Btn = QMessageBox.StandardButton
CTRL = Qt.KeyboardModifier.ControlModifier


def _activate(qtbot, win):
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)


def _image(seed, size=(64, 80)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


# ---- a slot that raises is never silent ---------------------------------------------------


@pytest.mark.qt_no_exception_capture
def test_a_slot_that_raises_reaches_the_banner_and_stderr(window, qtbot, capfd, monkeypatch):
    from editor.app import install_error_banner

    def broken(px):
        raise ValueError("assignment destination is read-only")

    monkeypatch.setattr(window.doc, "grow_mask", broken)
    previous = install_error_banner(window)
    try:
        grow = window.tools_panel.findChild(QPushButton, "mask_grow")
        qtbot.mouseClick(grow, Qt.MouseButton.LeftButton)
    finally:
        sys.excepthook = previous
    assert window.banner_host.isVisible()
    text = window.banner.text()
    assert "ValueError" in text and "read-only" in text and "\n" not in text
    assert "Traceback" in capfd.readouterr().err


# ---- opening is all-or-nothing --------------------------------------------------------------


def _project_with(tmp_path, name, mutate=None, members=None):
    """A project of another picture (so a half-done open would show), its JSON changed."""
    doc = document.Document(_image(7, (48, 40)))
    doc.add_result(_image(8, (48, 40)), {"method": "sdedit", "seed": 1})
    path = tmp_path / name
    project.save_project(doc, path)
    with zipfile.ZipFile(path) as z:
        content = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(content["project.json"])
    if mutate is not None:
        meta = mutate(meta)
    content["project.json"] = json.dumps(meta).encode()
    content.update(members or {})
    with zipfile.ZipFile(path, "w") as z:
        for n, data in content.items():
            if data is not None:
                z.writestr(n, data)
    return str(path)


def _set(key, value):
    def mutate(meta):
        meta[key] = value
        return meta

    return mutate


def _setting(key, value):
    def mutate(meta):
        meta["settings"][key] = value
        return meta

    return mutate


MALFORMED = {
    "settings are a list": (_set("settings", [1, 2]), None, "settings"),
    "steps out of range": (_setting("steps", 100000), None, "Steps"),
    "seed is text": (_setting("seed", "abc"), None, "Seed"),
    "guidance is NaN": (_setting("guidance", float("nan")), None, "Guidance"),
    "method unknown": (_setting("method", "magic"), None, "Method"),
    "option out of range": (_setting("options", {"repaint": {"jump_length": -4}}), None, "Jump"),
    "history holds strings": (_set("history", ["history/000.png"]), None, "result 1"),
    "history parameters a list": (
        _set("history", [{"file": "history/000.png", "parameters": [1]}]),
        None,
        "parameters",
    ),
    "json is a list": (lambda m: [m], None, "project.json"),
    "format missing": (_set("format", None), None, "format"),
    "source path a number": (_set("source_path", 5), None, "source_path"),
    "image missing": (None, {"image.png": None}, "image.png"),
    "mask of another size": (None, {"mask.png": b""}, "wrk.deproj"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_project_changes_nothing_and_ctrl_s_keeps_the_old_project(
    make_window, tmp_path, qtbot, case
):
    mutate, members, named = MALFORMED[case]
    if case == "mask of another size":
        buf = tmp_path / "m.png"
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(buf)
        members = {"mask.png": buf.read_bytes()}
    win = make_window(_image(1))
    good = str(tmp_path / "good.deproj")
    win.ask_save_path = lambda *a: good
    assert win.save_project()
    before = win.doc.image.copy()
    title, settings = win.windowTitle(), dict(win.doc.settings)
    bad = _project_with(tmp_path, "wrk.deproj", mutate, members)
    assert win.open_path(bad) is False
    assert win.banner_host.isVisible() and named in win.banner.text(), win.banner.text()
    assert "wrk.deproj" in win.banner.text()
    assert np.array_equal(win.doc.image, before) and win.doc.project_path == good
    assert win.windowTitle() == title and win.doc.settings == settings
    _activate(qtbot, win)
    qtbot.keyClick(win.canvas, Qt.Key.Key_S, CTRL)
    assert np.array_equal(project.read_project(good)["image"], before)


def test_bad_settings_in_a_png_never_reach_the_panel(window, tmp_path):
    files.save_png(
        _image(2), tmp_path / "p.png", {"prompt": "a boat", "steps": 100000, "guidance": 7.5}
    )
    with Image.open(tmp_path / "p.png") as im:  # and a CFG scale no tool should write
        text = im.info["parameters"].replace("CFG scale: 7.5", "CFG scale: nan")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text + ", Seed: -5")
    Image.fromarray(_image(2)).save(tmp_path / "p.png", pnginfo=info)
    window.doc.update_settings(steps=12, guidance=5.0, seed=9)
    assert window.open_path(str(tmp_path / "p.png"))
    s = window.doc.settings
    assert s["prompt"] == "a boat"  # the good field is used
    assert (s["steps"], s["guidance"], s["seed"]) == (12, 5.0, 9)  # the bad ones are not
    banner = window.banner.text()
    assert window.banner_host.isVisible() and "p.png" in banner
    assert "Steps" in banner and "CFG scale" in banner and "Seed" in banner  # the file's names
    assert (
        window.prompt_panel.findChild(type(window.prompt_panel.seed), "param_steps").value() == 12
    )


# ---- export writes what it says ------------------------------------------------------------


def test_export_never_writes_the_previous_images_parameters(window, tmp_path):
    files.save_png(_image(3), tmp_path / "a.png", {"prompt": "a boat", "seed": 42})
    Image.fromarray(_image(4)).save(tmp_path / "b.png")  # no parameters
    assert window.open_path(str(tmp_path / "a.png"))
    out_a = str(tmp_path / "a-out.png")
    window.ask_save_path = lambda *a: out_a
    assert window.export_png()
    assert files.read_parameters(out_a)["prompt"] == "a boat"  # unchanged image: its own
    assert window.open_path(str(tmp_path / "b.png"))
    out_b = str(tmp_path / "b-out.png")
    window.ask_save_path = lambda *a: out_b
    assert window.export_png()
    assert files.read_parameters(out_b) is None
    assert np.array_equal(files.load_image(out_b), _image(4))


def test_export_with_an_unapplied_result_asks_which_and_says_so(window, tmp_path, qtbot):
    entry = window.doc.add_result(
        np.full((*window.doc.size, 3), 77, np.uint8), {"prompt": "a cat", "seed": 5}
    )
    window.history_panel.select(entry)
    assert window.canvas.preview.isVisible()
    asked = []

    def answer(title, text, *a):
        asked.append(text)
        return answers.pop(0) if answers else Btn.Discard

    window.ask = answer
    out = str(tmp_path / "x.png")
    window.ask_save_path = lambda *a: out
    answers = [Btn.No]
    assert window.export_png()
    assert asked and "not applied" in asked[0]
    assert np.array_equal(files.load_image(out), window.doc.image)
    assert "without the unapplied result" in window.statusBar().currentMessage()
    answers = [Btn.Yes]
    assert window.export_png()
    assert np.array_equal(files.load_image(out), entry.image)
    assert files.read_parameters(out)["Seed"] == "5"
    assert "result" in window.statusBar().currentMessage()
    answers = [Btn.Cancel]
    assert not window.export_png()


# ---- saves: nothing left behind, permissions follow the umask -------------------------------


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


KILLED_SAVE = """
import sys, time
from editor import files
def write(f):
    f.write(b"x" * 1_000_000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
files.atomic_write(sys.argv[1], write)
"""


def test_a_killed_save_leaves_nothing_after_the_next_save_to_that_folder(window, tmp_path):
    target = tmp_path / "work.deproj"
    target.write_bytes(b"the last good save")
    saver = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert saver.stdout.readline().strip() == "writing"
    saver.kill()  # SIGKILL mid-save
    saver.wait()
    assert target.read_bytes() == b"the last good save"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers  # what a killed save leaves behind
    out = str(tmp_path / "x.png")
    window.ask_save_path = lambda *a: out
    assert window.export_png()
    assert not any(p.exists() for p in leftovers)
    live = tmp_path / f".other.png.{os.getppid()}-0123456789ab{files.TEMP_SUFFIX}"
    live.write_bytes(b"y")  # a save another running editor is making
    foreign = tmp_path / ".notes.txt.tmp"
    foreign.write_bytes(b"z")  # not ours
    assert window.export_png()
    assert live.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        [live.name, foreign.name]
    )


def test_stale_autosave_temporaries_are_cleaned_at_start(make_window, data_dir):
    folder = project.autosave_dir()
    stale = folder / f".1-a.deproj.{_dead_pid()}-0123456789ab{files.TEMP_SUFFIX}"
    stale.write_bytes(b"x" * 1000)
    make_window()
    assert not stale.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_follow_the_umask(window, tmp_path, umask):
    old = os.umask(umask)
    try:
        window.ask_save_path = lambda *a: str(tmp_path / "w.deproj")
        assert window.save_project()
        window.ask_save_path = lambda *a: str(tmp_path / "w.png")
        assert window.export_png()
    finally:
        os.umask(old)
    for name in ("w.deproj", "w.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ---- the result history is bounded by bytes ------------------------------------------------


def test_result_history_is_bounded_by_bytes(monkeypatch):
    assert 24 * 4096 * 4096 * 3 > document.HISTORY_BYTES  # the count bound alone: 1.15 GB
    monkeypatch.setattr(document, "HISTORY_BYTES", 10 * 1024**2)
    doc = document.Document(np.zeros((1024, 1024, 3), np.uint8))
    for i in range(8):
        doc.add_result(np.full((1024, 1024, 3), i, np.uint8), {"seed": i})
    assert sum(e.image.nbytes for e in doc.history) <= 10 * 1024**2
    assert [e.parameters["seed"] for e in doc.history] == [5, 6, 7]  # the newest kept
    monkeypatch.setattr(document, "HISTORY_BYTES", 1)
    doc.add_result(np.zeros((1024, 1024, 3), np.uint8), {"seed": 99})
    assert [e.parameters["seed"] for e in doc.history] == [99]  # never less than one


# ---- autosave and recovery -----------------------------------------------------------------


def _crash(win):
    """What a crash leaves: the autosave and its session file."""
    win.shutdown(clean=False)


def _answers(win, *replies):
    asked = []
    replies = list(replies)

    def ask(title, text, *a):
        asked.append(text)
        return replies.pop(0) if replies else Btn.Discard

    win.ask = ask
    return asked


def test_saving_a_project_clears_its_autosave(make_window, data_dir, tmp_path, qtbot):
    win = make_window(_image(1))
    win.doc.mask[:10, :10] = 255
    win.doc.mark_dirty()
    assert win.autosaver.save_now(wait=True)
    path = str(tmp_path / "p.deproj")
    win.ask_save_path = lambda *a: path
    _activate(qtbot, win)
    qtbot.keyClick(win.canvas, Qt.Key.Key_S, CTRL)
    assert not win.doc.is_modified()
    _crash(win)
    fresh = make_window()
    asked = _answers(fresh, Btn.Yes)
    assert not fresh.offer_recovery() and not asked  # nothing older than the project


def test_autosave_older_than_its_saved_project_says_so_and_cannot_overwrite_it(
    make_window, data_dir, tmp_path
):
    path = str(tmp_path / "p.deproj")
    win = make_window(_image(1))
    win.ask_save_path = lambda *a: path
    assert win.save_project()
    win.doc.mask[:10, :10] = 255
    win.doc.mark_dirty()
    assert win.autosaver.save_now(wait=True)
    _crash(win)
    other = make_window(_image(2))  # meanwhile the project is saved with newer work
    other.doc.project_path = path
    other.doc.mark_dirty()
    os.utime(project.recoverable()[0]["path"], None)
    meta = project.recoverable()[0]["meta_path"]
    m = json.loads(open(meta).read())
    m["time"] -= 10
    open(meta, "w").write(json.dumps(m))
    assert other.save_project()
    fresh = make_window()
    asked = _answers(fresh, Btn.Yes)
    assert fresh.offer_recovery()
    assert "saved later" in asked[0] and "older state" in asked[0]
    assert fresh.doc.project_path is None  # Ctrl+S asks where; the newer project is safe
    assert np.array_equal(project.read_project(path)["image"], _image(2))


def _crashed_sessions(make_window, n):
    made = []
    for i in range(n):
        win = make_window(_image(10 + i))
        win.doc.mask[i : i + 5, :5] = 255
        win.doc.mark_dirty()
        assert win.autosaver.save_now(wait=True)
        _crash(win)
        made.append(win.doc.image.copy())
    return made  # oldest first


def test_several_crashed_sessions_are_each_offered_and_none_deleted_unseen(make_window, data_dir):
    images = _crashed_sessions(make_window, 3)
    fresh = make_window()
    asked = _answers(fresh, Btn.Cancel)  # keep the newest for later: nothing is deleted
    assert not fresh.offer_recovery()
    assert len(asked) == 1 and "1 of 3" in asked[0]
    assert len(project.recoverable()) == 3
    fresh = make_window()
    asked = _answers(fresh, Btn.No, Btn.Yes)  # delete the newest, recover the next
    assert fresh.offer_recovery()
    assert len(asked) == 2
    assert np.array_equal(fresh.doc.image, images[1])
    left = project.recoverable()
    assert len(left) == 1  # the oldest was never shown: kept
    assert "other autosave" in fresh.statusBar().currentMessage()


def test_a_damaged_autosave_is_told_once_and_hides_nothing(make_window, data_dir):
    images = _crashed_sessions(make_window, 2)
    newest = project.recoverable()[0]
    with open(newest["path"], "r+b") as f:
        f.truncate(100)
    fresh = make_window()
    asked = _answers(fresh, Btn.Yes)
    assert fresh.offer_recovery()
    assert np.array_equal(fresh.doc.image, images[0])  # the older good one
    assert fresh.banner_host.isVisible() and "damaged" in fresh.banner.text()
    assert len(asked) == 1
    assert (project.autosave_dir() / "damaged" / os.path.basename(newest["path"])).exists()
    again = make_window()
    again.ask = lambda *a: Btn.No
    assert not again.offer_recovery()
    assert not again.banner_host.isVisible()  # not the same error at every start


def test_rerun_of_a_result_with_bad_settings_says_so(make_window, tmp_path, qtbot):
    """A project's result parameters are re-run only if they are valid settings."""
    bad = _project_with(
        tmp_path,
        "r.deproj",
        _set("history", [{"file": "history/000.png", "parameters": {"steps": 10**9}}]),
    )
    win = make_window()
    assert win.open_path(bad)
    steps = win.doc.settings["steps"]
    win.history_panel.select(win.doc.history[0])
    qtbot.mouseClick(win.history_panel.rerun, Qt.MouseButton.LeftButton)
    assert "Steps" in win.banner.text() and not win.bridge.busy
    assert win.doc.settings["steps"] == steps


def test_an_autosave_with_an_unreadable_description_is_still_offered(make_window, data_dir):
    images = _crashed_sessions(make_window, 1)
    entry = project.recoverable()[0]
    open(entry["meta_path"], "w").write("{not json")
    fresh = make_window()
    asked = _answers(fresh, Btn.Yes)
    assert fresh.offer_recovery() and len(asked) == 1
    assert np.array_equal(fresh.doc.image, images[0])
    assert not project.recoverable()


def test_export_and_save_name_a_missing_folder_before_writing(window, tmp_path):
    window.ask_save_path = lambda *a: str(tmp_path / "gone" / "x.png")
    assert not window.export_png()
    assert "folder" in window.banner.text() and "gone" in window.banner.text()
    window.ask_save_path = lambda *a: str(tmp_path / "gone" / "w.deproj")
    assert not window.save_project_as()
    assert "folder" in window.banner.text() and window.doc.project_path is None


def test_export_over_the_opened_picture_asks_first(window, tmp_path):
    src = tmp_path / "photo.png"
    Image.fromarray(_image(5)).save(src)
    original = src.read_bytes()
    assert window.open_path(str(src))
    window.doc.invert_mask()
    window.doc.replace_layer("image", 255 - window.doc.image, "invert")
    asked = _answers(window, Btn.No)
    window.ask_save_path = lambda *a: str(src)
    assert not window.export_png()
    assert asked and "opened from" in asked[0] and src.read_bytes() == original
    _answers(window, Btn.Yes)
    assert window.export_png()
    assert np.array_equal(files.load_image(src), 255 - _image(5))


def test_an_unusable_data_folder_turns_autosave_off_and_says_so(make_window, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    monkeypatch.setenv("DIFFUSION_EDITOR_DATA", str(blocker))
    win = make_window(_image(1))  # used to raise at start-up: the editor did not open
    assert "Autosave is off" in win.banner.text() and str(blocker) in win.banner.text()
    win.doc.mark_dirty()
    assert not win.autosaver.save_now(wait=True)
    assert not win.offer_recovery()
    win.ask_save_path = lambda *a: str(tmp_path / "still-saves.deproj")
    assert win.save_project()


def test_a_result_of_the_previous_picture_never_lands_on_the_next(window, tmp_path, qtbot):
    """A job finishing just as another picture of the same size is opened."""
    from engine import Finished

    window.jobs.current = RunningJob("sdedit", "sdedit")
    window.bridge.job_id = 10_000  # as if submitted for the current picture
    window.prompt_panel.set_busy(True)
    Image.fromarray(_image(6, window.doc.size)).save(tmp_path / "next.png")
    assert window.open_path(str(tmp_path / "next.png"))
    late = np.zeros((*window.doc.size, 3), np.uint8)
    window.bridge._dispatch(Finished(10_000, late, {"method": "sdedit"}, {}))
    assert not window.doc.history
    assert window.prompt_panel.run.isEnabled() and not window.bridge.busy


def test_a_project_with_more_results_than_memory_allows_opens_the_newest(
    make_window, tmp_path, monkeypatch
):
    doc = document.Document(_image(1, (64, 64)))
    for i in range(6):
        doc.add_result(np.full((64, 64, 3), i, np.uint8), {"seed": i})
    path = tmp_path / "many.deproj"
    project.save_project(doc, path)
    monkeypatch.setattr(document, "HISTORY_BYTES", 2 * 64 * 64 * 3)
    win = make_window()
    assert win.open_path(str(path))
    assert [e.parameters["seed"] for e in win.doc.history] == [4, 5]


def test_recovered_work_survives_a_second_crash_right_after(make_window, data_dir):
    images = _crashed_sessions(make_window, 1)
    fresh = make_window()
    _answers(fresh, Btn.Yes)
    assert fresh.offer_recovery()
    _crash(fresh)  # before its first autosave interval
    again = make_window()
    _answers(again, Btn.Yes)
    assert again.offer_recovery()
    assert np.array_equal(again.doc.image, images[0])


def test_a_failing_autosave_is_shown_in_the_banner(window, qtbot, monkeypatch):
    def full_disk(snap, path):
        raise files.FileError("Could not save the autosave: No space left on device.")

    monkeypatch.setattr(project, "write_snapshot", full_disk)
    window.doc.mark_dirty()
    with qtbot.waitSignal(window.autosaver.error, timeout=5000):
        window.autosaver.save_now()
    qtbot.waitUntil(lambda: "Autosave failed" in window.banner.text(), timeout=5000)
    assert "No space left" in window.banner.text()
