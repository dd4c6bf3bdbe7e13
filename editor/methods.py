"""The methods the panel offers, their parameters, and how a document becomes a request.

One UI method may need two engine methods (DiffEdit: make the mask, then edit; Invert &
re-edit: invert once, then re-edit many times). Parameters are stored in the document's
settings: the common ones at the top level, method options under ``settings["options"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import EditRequest

from .document import DEFAULT_SETTINGS, Document, image_key


@dataclass(frozen=True)
class Param:
    key: str
    label: str
    default: Any
    tooltip: str
    lo: float = 0
    hi: float = 1
    step: float = 1
    choices: tuple[str, ...] = ()
    option: bool = True  # False: a top-level request field (steps, guidance, strength)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    engine: tuple[str, ...]  # engine methods this needs, in the order they run
    tooltip: str
    params: tuple[Param, ...] = field(default_factory=tuple)
    prep_label: str = ""  # a button for the first stage, e.g. "Make mask"


STEPS = Param(
    "steps", "Steps", 25, "Denoising steps; more is slower and finer.", 1, 500, 1, option=False
)
GUIDANCE = Param(
    "guidance",
    "Guidance",
    7.5,
    "Classifier-free guidance: how strongly to follow the prompt.",
    0,
    30,
    0.5,
    option=False,
)
STRENGTH = Param(
    "strength",
    "Strength",
    0.6,
    "How far to noise the input before denoising: 0 keeps it, 1 ignores it.",
    0,
    1,
    0.05,
    option=False,
)

METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method(
            "generate",
            "Generate",
            ("generate",),
            "Text to image at the canvas size.",
            (STEPS, GUIDANCE),
        ),
        Method(
            "sdedit",
            "SDEdit (strokes → image)",
            ("sdedit",),
            "Noise the image with your colour strokes to the chosen strength, then denoise "
            "with the prompt (Meng et al. 2021). With a mask, only the masked area changes.",
            (
                STEPS,
                GUIDANCE,
                STRENGTH,
                Param(
                    "mask_grow", "Mask grow", 1, "Grow the mask by this many latent cells.", 0, 8
                ),
                Param(
                    "feather",
                    "Feather px",
                    0.0,
                    "Soft edge when pasting back (0 = automatic).",
                    0,
                    64,
                    1,
                ),
                Param("eta", "Eta", 0.0, "DDIM stochasticity (0 = deterministic).", 0, 1, 0.1),
            ),
        ),
        Method(
            "repaint",
            "Inpaint (RePaint)",
            ("repaint",),
            "Regenerate the masked area; the rest is re-noised from the original every step "
            "so both harmonise (Lugmayr et al. 2022).",
            (
                STEPS,
                GUIDANCE,
                Param(
                    "jump_length",
                    "Jump length",
                    5,
                    "Steps to go back up the chain per jump.",
                    1,
                    50,
                ),
                Param(
                    "jump_n_sample", "Resamples", 3, "How often each jump is repeated (r).", 1, 20
                ),
                Param(
                    "sampler",
                    "Sampler",
                    "ddpm",
                    "Reverse step used between jumps.",
                    choices=("ddim", "ddpm"),
                ),
            ),
        ),
        Method(
            "diffedit",
            "DiffEdit",
            ("diffedit_mask", "diffedit"),
            "Make a mask from where the query and reference prompts disagree, touch it up, "
            "then edit inside it (Couairon et al. 2022). The prompt is the query.",
            (
                STEPS,
                GUIDANCE,
                STRENGTH,
                Param(
                    "reference_prompt", "Reference", "", "What the image shows now (may be empty)."
                ),
                Param(
                    "n_samples", "Mask samples", 4, "Noise samples averaged for the mask.", 1, 16
                ),
                Param("threshold", "Threshold", 0.5, "Mask binarisation threshold.", 0, 1, 0.05),
            ),
            prep_label="Make mask",
        ),
        Method(
            "reedit",
            "Invert & re-edit",
            ("invert", "reedit"),
            "Invert the photo once under the source prompt, then re-edit it with changed "
            "prompts reusing that inversion (Mokady et al. 2022).",
            (
                STEPS,
                GUIDANCE,
                Param("source_prompt", "Source prompt", "", "A caption of the photo as it is."),
                Param(
                    "inversion",
                    "Inversion",
                    "null_text",
                    "How the photo is inverted.",
                    choices=(
                        "ddim",
                        "null_text",
                        "null_text_reference",
                        "negative_prompt",
                        "direct",
                    ),
                ),
                Param(
                    "depth",
                    "Depth",
                    1.0,
                    "How much of the inverted chain to regenerate: 1 can change anything (time "
                    "of day, new objects); about 0.4 keeps shapes and changes colours.",
                    0.05,
                    1.0,
                    0.05,
                ),
            ),
            prep_label="Invert",
        ),
    )
}


def value(doc: Document, method: str, p: Param) -> Any:
    if not p.option:
        return doc.settings.get(p.key, p.default)
    return doc.settings.get("options", {}).get(method, {}).get(p.key, p.default)


def set_value(doc: Document, method: str, p: Param, v: Any) -> None:
    if not p.option:
        doc.update_settings(**{p.key: v})
        return
    opts = doc.settings.setdefault("options", {}).setdefault(method, {})
    if opts.get(p.key) != v:
        opts[p.key] = v
        doc.mark_dirty()


class NeedsInput(Exception):
    """The document lacks something this method needs; the message says what."""


def build_request(doc: Document, method: str, stage: int = -1) -> EditRequest:
    """Snapshot the document into a request for ``METHODS[method].engine[stage]``."""
    m = METHODS[method]
    engine_method = m.engine[stage]
    s = doc.settings
    opts = {p.key: value(doc, method, p) for p in m.params if p.option}
    has_mask = bool(doc.mask.any())
    has_strokes = bool(doc.strokes[..., 3].any())
    common = {
        "prompt": s.get("prompt", ""),
        "negative_prompt": s.get("negative_prompt", ""),
        "steps": int(s.get("steps", 25)),
        "guidance": float(s.get("guidance", 7.5)),
        "strength": float(s.get("strength", 0.6)),
        "seed": int(s.get("seed", 0)),
    }
    image = doc.image
    strokes = doc.strokes if has_strokes else None
    mask = doc.mask if has_mask else None
    h, w = doc.size
    if engine_method == "generate":
        return EditRequest("generate", width=w, height=h, **common)
    if engine_method in ("repaint", "diffedit") and mask is None:
        what = "Paint a mask" if engine_method == "repaint" else "Make or paint a mask"
        raise NeedsInput(f"{what} first: {m.label} edits only inside the mask.")
    if engine_method == "diffedit_mask":
        opts = {k: opts[k] for k in ("reference_prompt", "n_samples", "threshold")}
        return EditRequest("diffedit_mask", image=image, strokes=strokes, options=opts, **common)
    if engine_method == "diffedit":
        opts = {"reference_prompt": opts["reference_prompt"]}
    if engine_method == "invert":
        common["prompt"] = opts["source_prompt"]
        return EditRequest(
            "invert", image=image, options={"inversion": opts["inversion"]}, **common
        )
    if engine_method == "reedit":
        if doc.inversion is None:
            raise NeedsInput("Invert the image first (the Invert button), then re-edit.")
        if doc.inversion_source != image_key(image):
            raise NeedsInput(
                "The image changed since it was inverted: press Invert again, then re-edit."
            )
        options = {"inversion": doc.inversion, "depth": float(opts["depth"])}
        return EditRequest("reedit", image=image, mask=mask, options=options, **common)
    return EditRequest(
        engine_method, image=image, strokes=strokes, mask=mask, options=opts, **common
    )


def random_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31 - 1))


# ---- settings from files: checked against the same bounds the panel offers ------------------

SEED = Param("seed", "Seed", 0, "", 0, 2**31 - 1, option=False)
_TOP = {p.key: p for p in (STEPS, GUIDANCE, STRENGTH, SEED)}
_TEXT = {"prompt": "Prompt", "negative_prompt": "Negative prompt"}


def _kind(v: Any) -> str:
    """What a JSON value is, in words."""
    kinds = {list: "a list", str: "text", bool: "true/false", type(None): "empty"}
    return kinds.get(type(v), "a number" if isinstance(v, (int, float)) else "something else")


class SettingsError(ValueError):
    """A setting read from a file is of the wrong type or out of range; says which."""


def _check_param(p: Param, v: Any, where: str) -> Any:
    """``v`` as the type ``p`` holds, if it is one and lies within ``p``'s range."""
    label = f"{where}{p.label}"
    if p.choices:
        if v not in p.choices:
            raise SettingsError(f"{label} is {v!r}; it must be one of {', '.join(p.choices)}.")
        return v
    if isinstance(p.default, str):
        if not isinstance(v, str):
            raise SettingsError(f"{label} is {v!r}; it must be text.")
        return v
    whole = isinstance(p.default, int)
    ok_type = isinstance(v, int) if whole else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v) or not p.lo <= v <= p.hi:
        kind = "a whole number" if whole else "a number"
        lo, hi = (int(p.lo), int(p.hi)) if whole else (p.lo, p.hi)
        raise SettingsError(f"{label} is {v!r}; it must be {kind} from {lo} to {hi}.")
    return int(v) if whole else float(v)


def check_setting(key: str, v: Any) -> Any:
    """One top-level setting checked (and converted); ``SettingsError`` names the field."""
    if key in _TOP:
        return _check_param(_TOP[key], v, "")
    if key in _TEXT:
        if not isinstance(v, str):
            raise SettingsError(f"{_TEXT[key]} is {v!r}; it must be text.")
        return v
    if key == "method":
        if v not in METHODS:
            raise SettingsError(f"Method is {v!r}; it must be one of {', '.join(METHODS)}.")
        return v
    if key == "seed_locked":
        if not isinstance(v, bool):
            raise SettingsError(f"Seed lock is {v!r}; it must be true or false.")
        return v
    if key == "options":
        return _check_options(v)
    raise SettingsError(f"{key!r} is not a setting.")


def _check_options(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise SettingsError(f"Method options are {_kind(raw)}, not a table.")
    out: dict[str, dict[str, Any]] = {}
    for method, opts in raw.items():
        if method not in METHODS:
            continue  # options of a method this version lacks: dropped, not an error
        if not isinstance(opts, dict):
            raise SettingsError(f"The options of {METHODS[method].label} are not a table.")
        params = {p.key: p for p in METHODS[method].params if p.option}
        where = f"{METHODS[method].label} option "
        out[method] = {k: _check_param(params[k], v, where) for k, v in opts.items() if k in params}
    return out


def check_settings(raw: Any) -> dict[str, Any]:
    """Settings from a project file → complete, valid settings (defaults for what is
    missing, unknown keys dropped); the first bad field raises ``SettingsError``."""
    if not isinstance(raw, dict):
        raise SettingsError(f"Settings are {_kind(raw)}, not a table.")
    out = {**DEFAULT_SETTINGS, "options": {}}
    for key in DEFAULT_SETTINGS:
        if key in raw:
            out[key] = check_setting(key, raw[key])
    return out
