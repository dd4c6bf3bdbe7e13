"""LoRAs in the Model menu, and the form defaults a few-step or an inpainting model asks for.

*Model › Add LoRA…* fuses a ``.safetensors`` LoRA into the loaded model (engine.lora: it
works for every method); *Model › LoRAs* lists the fused ones with their weights, each with
*Set weight…* and *Remove* (its weights come back bit-exactly). The engine answers each
change with the model's info, whose ``few_step``/``defaults`` may now ask for other settings
(an LCM LoRA wants the lcm sampler at 4 steps): ``use_model_defaults`` puts them in the form.
An inpainting model needs no resampling: ``use_inpainting_default`` sets Inpaint's Resamples.
"""

from __future__ import annotations

from PySide6.QtWidgets import QInputDialog, QMenu

from engine.methods import COMMON

from .methods import METHODS, Param, set_value, value

# the panel methods whose form has a sampler: a few-step model's sampler goes there
SAMPLED = ("generate", "sdedit")


def use_model_defaults(doc, info) -> str:
    """Put a few-step model's sampler, steps and guidance in the form (generate, SDEdit);
    after an ordinary model replaces a few-step one, put back DDIM and the declared step
    count. Returns a sentence for the status line ("" when nothing changed)."""
    d = dict(info.defaults or {}) if info.few_step else {}
    sampler = d.get("sampler", "ddim")
    current = {m: _sampler(doc, m) for m in SAMPLED}
    if not d and "lcm" not in current.values():
        return ""  # an ordinary model after an ordinary one: the user's settings stay
    for m in SAMPLED:
        if current[m] != sampler:
            set_value(doc, m, _sampler_param(m), sampler)
    steps = int(d.get("steps", COMMON["steps"].default))
    guidance = float(d.get("guidance", COMMON["guidance"].default))
    doc.update_settings(steps=steps, guidance=guidance)
    if d:
        return (
            f"{info.few_step} model: sampler {sampler}, {steps} steps, guidance {guidance:g} "
            "set for Generate and SDEdit"
        )
    return f"Ordinary model: sampler ddim, {steps} steps, guidance {guidance:g} set back"


def use_inpainting_default(doc, inpainting: bool, was_inpainting: bool) -> str:
    """When an inpainting model replaces an ordinary one, Inpaint's Resamples at its default
    becomes 1 (the model sees the area's surroundings itself; the engine's default for it);
    when an ordinary model replaces it, a 1 goes back to the default. A value the user chose
    stays. Returns a sentence for the status line ("" when nothing changed)."""
    if inpainting == was_inpainting:
        return ""
    p = next(p for p in METHODS["repaint"].params if p.key == "jump_n_sample")
    old, new = (p.default, 1) if inpainting else (1, p.default)
    if value(doc, "repaint", p) != old:
        return ""
    set_value(doc, "repaint", p, new)
    if inpainting:
        return "Inpainting model: Inpaint's Resamples set to 1 (no resampling needed)"
    return f"Ordinary model: Inpaint's Resamples set back to {new}"


def _sampler_param(method: str) -> Param:
    return next(p for p in METHODS[method].params if p.key == "sampler")


def _sampler(doc, method: str) -> str:
    return value(doc, method, _sampler_param(method))


class LoraMenu:
    """The Model menu's LoRA entries for a window (``win.bridge`` talks to the engine)."""

    def __init__(self, win, menu: QMenu):
        self.win = win
        menu.addSeparator()
        win._action(
            menu,
            "Add &LoRA…",
            self.add,
            tip="Fuse a LoRA file (.safetensors) into the model, for every method",
        )
        self.menu = menu.addMenu("LoRA&s")
        self.refresh(())

    def add(self) -> None:
        path = self.win.ask_open_path("Add LoRA", "LoRA files (*.safetensors)")
        if path:
            self.win.bridge.change_loras("add", path=path)

    def set_weight(self, name: str, weight: float) -> None:
        w, ok = QInputDialog.getDouble(
            self.win, "LoRA weight", f"Weight of {name} (0 turns it off):", weight, -4, 4, 2
        )
        if ok:
            self.win.bridge.change_loras("weight", name=name, weight=w)

    def refresh(self, loras) -> None:
        """Rebuild the LoRAs submenu from the model's (name, weight) pairs."""
        self.menu.clear()
        if not loras:
            self.menu.addAction("(none loaded)").setEnabled(False)
            return
        for name, weight in loras:
            sub = self.menu.addMenu(f"{name}  ×{weight:g}")
            sub.addAction("Set weight…").triggered.connect(
                lambda *_, n=name, w=weight: self.set_weight(n, w)
            )
            sub.addAction("Remove").triggered.connect(
                lambda *_, n=name: self.win.bridge.change_loras("remove", name=n)
            )
        self.menu.addSeparator()
        self.menu.addAction("Remove all").triggered.connect(
            lambda *_: self.win.bridge.change_loras("clear")
        )
