"""A real editor process killed with SIGKILL mid-edit and after a save: what the next start
offers and what it restores (``python -m editor`` offscreen, driven by crash_hook.py). Three
editor starts, about 5 s each on an idle machine."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editor import project

HOOK = Path(__file__).with_name("crash_hook.py")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
]


class Editor:
    """``python -m editor`` in a subprocess; ``wait(event)`` reads its hook's reports."""

    def __init__(self, data_dir, project_path, phase, *args):
        env = {
            **os.environ,
            "QT_QPA_PLATFORM": "offscreen",
            "DIFFUSION_EDITOR_DATA": str(data_dir),
            "DIFFUSION_EDITOR_TEST_HOOK": str(HOOK),
            "CRASH_PHASE": phase,
            "CRASH_PROJECT": str(project_path),
        }
        cmd = [sys.executable, "-m", "editor", "--model", "builtin:tiny", "--device", "cpu"]
        self.proc = subprocess.Popen(
            [*cmd, "--autosave", "0.2", *map(str, args)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.append(line)
            if line.startswith("EVENT "):
                self.lines.put(json.loads(line[6:]))

    def wait(self, event, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if got["event"] == event:
                return got
        self.kill()
        pytest.fail(f"no {event!r} from the editor; its output:\n{''.join(self.log)}")

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_sigkill_mid_edit_and_after_a_save(tmp_path, monkeypatch):
    data = tmp_path / "data"
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)).save(photo)
    work = tmp_path / "work.deproj"

    # 1. mid-edit: the photo is open and edited, the autosave written, then SIGKILL
    ed = Editor(data, work, "edit", photo)
    banner = ed.wait("banner")
    assert "ValueError" in banner["text"] and "failed on purpose" in banner["text"]
    edited = ed.wait("autosaved")
    ed.kill()
    monkeypatch.setenv("DIFFUSION_EDITOR_DATA", str(data))  # what the next start sees
    offered = project.recoverable()
    assert len(offered) == 1 and offered[0]["source_path"] == str(photo)

    # 2. the next start offers it; Yes restores the edit; saved as a project; idle
    ed = Editor(data, work, "recover_save_edit")
    got = ed.wait("recovered")
    assert len(got["questions"]) == 1 and "photo.png" in got["questions"][0]
    for key in ("image", "mask", "strokes"):
        assert got[key] == edited[key], key
    saved = ed.wait("saved")
    assert saved["project_path"] == str(work)
    ed.wait("idle")
    # killed now, after the save, the next start would offer nothing: no autosave is left
    assert not list(project.autosave_dir().glob(f"*{project.PROJECT_SUFFIX}"))
    on_disk = project.read_project(work)
    assert int((on_disk["mask"] > 0).sum()) == edited["mask"]

    # 3. then edited further, autosaved, SIGKILL
    newer = ed.wait("autosaved")
    ed.kill()
    assert newer["mask"] > edited["mask"]

    # 4. the next start offers the newer state of that project and restores it
    ed = Editor(data, work, "recover_and_quit")
    got = ed.wait("recovered")
    assert len(got["questions"]) == 1 and "work.deproj" in got["questions"][0]
    assert "saved later" not in got["questions"][0]  # the autosave is the newer state
    assert (got["mask"], got["strokes"]) == (newer["mask"], newer["strokes"])
    assert got["project_path"] == str(work)
    assert ed.proc.wait(timeout=30) == 0, "".join(ed.log)  # a clean exit
    assert not project.recoverable()
    assert int((project.read_project(work)["mask"] > 0).sum()) == edited["mask"]


def test_quitting_while_the_model_loads_exits_cleanly(tmp_path):
    """Exiting while a load runs inside torch used to abort the process (exit code 134)."""
    ed = Editor(tmp_path / "data", tmp_path / "w.deproj", "quit_at_once")
    assert ed.wait("loading")["loaded"] is False
    assert ed.proc.wait(timeout=120) == 0, "".join(ed.log)
    assert "terminate called" not in "".join(ed.log)
