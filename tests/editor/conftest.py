"""Editor test fixtures: offscreen Qt, private cache and data dirs, one tiny-model engine."""

import os
import tempfile

os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.setdefault("DIFFUSION_EDITOR_CACHE", tempfile.mkdtemp(prefix="de-test-cache-"))
os.environ["DIFFUSION_EDITOR_DATA"] = tempfile.mkdtemp(prefix="de-test-data-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402


@pytest.fixture(scope="session")
def engine():
    """One engine thread with builtin:tiny for the whole session (loading costs seconds)."""
    from engine import Engine

    eng = Engine("builtin:tiny", device="cpu")
    event = eng.wait(1, timeout=180)
    assert event is not None and type(event).__name__ == "ModelLoaded", event
    yield eng
    eng.shutdown()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("DIFFUSION_EDITOR_DATA", str(d))
    return d


@pytest.fixture
def make_window(qtbot, engine, data_dir):
    """Build main windows on the shared engine; closes them (discarding changes) after."""
    from editor.app import MainWindow

    made = []

    def make(image=None, size=(900, 700)):
        win = MainWindow(engine, model=None, autosave_ms=10**9)
        win.ask = lambda *a, **k: QMessageBox.StandardButton.Discard
        qtbot.addWidget(win)
        win.resize(*size)
        win.show()
        qtbot.waitExposed(win)
        if image is not None:
            win.doc.set_image(image)
        made.append(win)
        return win

    yield make
    for win in made:
        win.ask = lambda *a, **k: QMessageBox.StandardButton.Discard
        win.close()
        win.shutdown()


@pytest.fixture
def window(make_window):
    rng = np.random.default_rng(0)
    return make_window(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8))
