"""LoRAs from the Model menu: a LoRA file on disk added, listed with its weight, its few-step
defaults put in the form, used by a Run and recorded; reweighted, removed, and a bad file
refused in one sentence."""

import numpy as np
from test_a1111_flows import menu_action
from test_lora import make_lora, write_kohya

from editor.loras import SAMPLED
from editor.methods import METHODS, value


def sampler(win, method):
    p = next(p for p in METHODS[method].params if p.key == "sampler")
    return value(win.doc, method, p)


def loras_submenu(win):
    model = next(a for a in win.menuBar().actions() if a.text().replace("&", "") == "Model")
    return next(a.menu() for a in model.menu().actions() if a.text().replace("&", "") == "LoRAs")


def test_a_lora_from_the_model_menu(make_window, qtbot, tiny, tmp_path):
    win = make_window(np.full((64, 64, 3), 120, np.uint8))
    path = write_kohya(make_lora(tiny, seed=3), tmp_path / "lcm-lora-sketch.safetensors", 1.0)
    win.ask_open_path = lambda *a: str(path)  # the file dialog's answer
    with qtbot.waitSignal(win.bridge.loras_changed, timeout=60_000):
        menu_action(win, "Model", "Add LoRA…").trigger()
    assert "+ lcm-lora-sketch ×1" in win.model_label.text()
    entries = [a.text() for a in loras_submenu(win).actions() if a.text()]
    assert entries[0] == "lcm-lora-sketch  ×1" and "Remove all" in entries
    # an LCM LoRA asks for the lcm sampler, few steps and low guidance: the form has them
    assert all(sampler(win, m) == "lcm" for m in SAMPLED)
    assert (win.doc.settings["steps"], win.doc.settings["guidance"]) == (4, 1.5)
    with qtbot.waitSignal(win.bridge.finished, timeout=60_000) as done:
        win.run_method("generate")
    assert done.args[0].parameters["loras"][0]["name"] == "lcm-lora-sketch"
    assert done.args[0].parameters["sampler"] == "lcm"
    # applied and exported: the PNG names the LoRA as A1111 does
    win.apply_result(win.doc.history[-1])
    png = tmp_path / "with-lora.png"
    win.ask_save_path = lambda *a: str(png)
    assert win.export_png()
    # a project keeps the result's LoRAs and opens again
    deproj = tmp_path / "with-lora.deproj"
    win.ask_save_path = lambda *a: str(deproj)
    assert win.save_project_as()
    assert win.open_path(str(deproj))
    assert win.doc.history[-1].parameters["loras"][0]["name"] == "lcm-lora-sketch"

    with qtbot.waitSignal(win.bridge.loras_changed, timeout=60_000):
        win.bridge.change_loras("weight", name="lcm-lora-sketch", weight=0.5)
    assert "×0.5" in win.model_label.text()

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    win.ask_open_path = lambda *a: str(bad)
    with qtbot.waitSignal(win.bridge.lora_failed, timeout=60_000):
        menu_action(win, "Model", "Add LoRA…").trigger()
    assert win.banner_host.isVisible() and "\n" not in win.banner.text()
    assert "lcm-lora-sketch ×0.5" in win.model_label.text()  # the model is as it was

    remove = loras_submenu(win).actions()[0].menu().actions()[1]
    assert remove.text() == "Remove"
    with qtbot.waitSignal(win.bridge.loras_changed, timeout=60_000):
        remove.trigger()
    assert "+" not in win.model_label.text()
    assert [a.text() for a in loras_submenu(win).actions()] == ["(none loaded)"]
    # back on an ordinary model: DDIM and the usual step count
    assert all(sampler(win, m) == "ddim" for m in SAMPLED)
    assert win.doc.settings["steps"] == 25
    # reopened without the LoRA: the prompt has no tag, and the status names what is missing
    win.doc.mark_saved()
    assert win.open_path(str(png))
    assert "<lora" not in win.doc.settings["prompt"]
    assert "<lora" not in win.doc.image_parameters()["prompt"]  # what Edit prompt replays
    assert "made with lcm-lora-sketch ×1" in win.statusBar().currentMessage()
