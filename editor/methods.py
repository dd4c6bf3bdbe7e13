"""The methods the panel offers, their parameters, and how a document becomes a request.

One UI method may need two engine methods (DiffEdit: make the mask, then edit; Invert &
re-edit: invert once, then re-edit many times). Parameters are stored in the document's
settings: the common ones at the top level, method options under ``settings["options"]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import EditRequest
from engine.metadata import NotReplayable, replay_of
from engine.methods import BATCH_SIZE as ENGINE_BATCH_SIZE
from engine.methods import COMMON, OptionSpec, label_of
from engine.methods import METHODS as ENGINE_METHODS
from engine.prompts import parse_weights, plain_text

from .document import Document, default_settings, image_key


@dataclass(frozen=True)
class Param:
    """One field of a method's form, read from its declaration in ``engine.methods``."""

    key: str
    label: str
    default: Any
    tooltip: str
    lo: float = 0
    hi: float = 1
    step: float = 1
    choices: tuple[str, ...] = ()
    option: bool = True  # False: a top-level request field (steps, guidance, strength)
    kind: type | None = None
    requires: str = ""  # a part the model must ship (OptionSpec.requires), else not offered

    @classmethod
    def of(cls, key: str, spec: OptionSpec, option: bool = True) -> Param:
        return cls(
            key,
            label_of(key, spec),
            spec.default,
            spec.help,
            0 if spec.lo is None else spec.lo,
            1 if spec.hi is None else spec.hi,
            spec.step,
            tuple(spec.choices),
            option,
            spec.kind,
            spec.requires,
        )


# The caption of the photo Invert & re-edit inverts: the invert stage's prompt, so the
# panel's prompt stays the edit's.
SOURCE_PROMPT = OptionSpec(str, "", "A caption of the photo as it is.", label="Source prompt")
EXTRA: dict[str, dict[str, OptionSpec]] = {"reedit": {"source_prompt": SOURCE_PROMPT}}


PROMPT_HINT = "Prompt: what the result should show"


@dataclass(frozen=True)
class Method:
    """A method of the panel: one or more engine methods, its form built from their
    declarations (the common fields they read, then their options offered in forms)."""

    key: str
    label: str
    engine: tuple[str, ...]  # engine methods this needs, in the order they run
    tooltip: str
    prep_label: str = ""  # a button for the first stage, e.g. "Make mask"
    # the image layer's generation parameters fill the common fields and these options
    # (Edit prompt replays the generation): the form does not offer them
    from_image: tuple[str, ...] = ()
    seed_tip: str = ""  # what the seed changes, where that is not the whole result
    prep_tip: str = ""  # the preparation button's tooltip
    # the empty prompt box's placeholder where the model ships a part (ModelInfo.parts):
    # (part, hint) pairs, the first that applies wins; else PROMPT_HINT
    prompt_hints: tuple[tuple[str, str], ...] = ()

    def prompt_hint(self, model_parts: tuple[str, ...]) -> str:
        return next((h for part, h in self.prompt_hints if part in model_parts), PROMPT_HINT)

    @property
    def seeded(self) -> bool:
        """Whether the seed changes what this method makes: some stage is stochastic and
        reads the seed (an image's own seed replays it: Edit prompt)."""
        specs = [ENGINE_METHODS[e] for e in self.engine]
        return not self.from_image and any(m.stochastic and "seed" in m.common for m in specs)

    @property
    def params(self) -> tuple[Param, ...]:
        specs = [ENGINE_METHODS[e] for e in self.engine]
        common = [k for k in COMMON if k != "seed" and any(k in m.common for m in specs)]
        if self.from_image:
            common = []
        out = {k: Param.of(k, COMMON[k], option=False) for k in common}
        out.update({k: Param.of(k, o) for k, o in EXTRA.get(self.key, {}).items()})
        for m in specs:
            for k, o in m.options.items():
                if o.form and k not in out and k not in self.from_image:
                    out[k] = Param.of(k, o)
        return tuple(out.values())


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("generate", "Generate", ("generate",), "Text to image at the canvas size."),
        Method(
            "sdedit",
            "SDEdit (strokes → image)",
            ("sdedit",),
            "Noise the image with your colour strokes to the chosen strength, then denoise "
            "with the prompt (Meng et al. 2021). With a mask, only the masked area changes.",
        ),
        Method(
            "repaint",
            "Inpaint (RePaint)",
            ("repaint",),
            "Regenerate the masked area; the rest is re-noised from the original every step "
            "so both harmonise (Lugmayr et al. 2022). With an inpainting model, describe what "
            "the area should show: a caption of the whole picture lets it draw any of the "
            "things the caption names there.",
            # measured: the inpainting model drew the new object more often from the object
            # alone than from the whole caption; RePaint on an ordinary model did not gain
            # (README, issue 20's seventh report)
            prompt_hints=(
                ("inpainting", "Prompt: what the masked area should show, e.g. a pine tree"),
            ),
        ),
        Method(
            "diffedit",
            "DiffEdit",
            ("diffedit_mask", "diffedit"),
            "Make a mask from where the query and reference prompts disagree, touch it up, "
            "then edit inside it (Couairon et al. 2022). The prompt is the query.",
            prep_label="Make mask",
            prep_tip="Find where the picture should change (where the prompt and Reference "
            "disagree) and put that into the mask layer, to check and touch up with the mask "
            "brush before Run edits inside it.",
            seed_tip="The seed changes the mask Make mask finds; the edit inside a mask is "
            "the same for every seed.",
        ),
        Method(
            "reedit",
            "Invert & re-edit",
            ("invert", "reedit"),
            "Invert the photo once under the source prompt, then re-edit it with changed "
            "prompts reusing that inversion (Mokady et al. 2022).",
            prep_label="Invert",
            prep_tip="Turn the picture into the noise that redraws it under the Source "
            "prompt (once per picture; takes a while). Then change the prompt and Run, as "
            "often as you like.",
        ),
        Method(
            "edit_generated",
            "Edit prompt (keep layout)",
            ("edit_generated",),
            "Edit a generated image by editing its prompt: its seed and settings replay it "
            "beside the edit, which keeps its layout (Prompt-to-Prompt, Hertz et al. 2022). "
            "Apply a generated result first; for photos use Invert & re-edit.",
            from_image=("source_prompt",),
        ),
    )
}

# panel methods whose results carry attention maps and a local-blend mask
ATTENTION = ("reedit", "edit_generated")


def panel_method(engine_method: str | None) -> Method | None:
    """The panel method that runs ``engine_method`` (DiffEdit's mask stage → DiffEdit)."""
    return next((m for m in METHODS.values() if engine_method in m.engine), None)


# engine methods whose results change only inside the request's mask
MASKED = tuple(name for name, m in ENGINE_METHODS.items() if m.mask != "unused")


# common fields each method keeps its own value of (SDEdit's strength is not DiffEdit's);
# a method that has none yet takes the document's (a project's, a PNG's) or the default
PER_METHOD = ("strength",)


def value(doc: Document, method: str, p: Param) -> Any:
    own = doc.settings.get("options", {}).get(method, {})
    if not p.option:
        if p.key in PER_METHOD and p.key in own:
            return own[p.key]
        return doc.settings.get(p.key, p.default)
    return own.get(p.key, p.default)


def common_value(doc: Document, method: str, key: str) -> Any:
    """A common request field as ``method`` runs it (its own value where it keeps one)."""
    return COMMON[key].kind(value(doc, method, Param.of(key, COMMON[key], option=False)))


def set_value(doc: Document, method: str, p: Param, v: Any) -> None:
    if not p.option and p.key not in PER_METHOD:
        doc.update_settings(**{p.key: v})
        return
    opts = doc.settings.setdefault("options", {}).setdefault(method, {})
    if opts.get(p.key) != v:
        opts[p.key] = v
        doc.mark_dirty()


def seed_matters(request: EditRequest) -> bool:
    """Whether another seed would change this request's result (a batch makes sense):
    DiffEdit's edit inside a given mask is deterministic, its seed only finds a mask."""
    spec = ENGINE_METHODS[request.method]
    if request.method == "diffedit" and request.mask is not None:
        return False
    return spec.stochastic and "seed" in spec.common


# how many pictures one pass of the model makes (the methods that declare batch_size)
BATCH_SIZE = Param(
    "batch_size",
    "Batch size",
    ENGINE_BATCH_SIZE.default,
    ENGINE_BATCH_SIZE.help,
    ENGINE_BATCH_SIZE.lo,
    ENGINE_BATCH_SIZE.hi,
    kind=int,
    option=False,
)


def batch_size_offered(method: str) -> bool:
    """Whether the panel method's Run stage makes several pictures in one pass."""
    return "batch_size" in ENGINE_METHODS[METHODS[method].engine[-1]].options


# how many pictures one Run makes (seed, seed + 1, …), one job after the other
BATCH_COUNT = Param(
    "batch_count",
    "Batch count",
    1,
    "How many pictures one Run makes, with seeds seed, seed + 1, …: all land under Results "
    "to pick from.",
    1,
    16,
    kind=int,
    option=False,
)


class NeedsInput(Exception):
    """The document lacks something this method needs; the message says what."""


def offered(p: Param, parts: tuple[str, ...] | None) -> bool:
    """Whether the loaded model (which ships ``parts``; None: not known) can use ``p``."""
    return not p.requires or parts is None or p.requires in parts


def build_request(
    doc: Document, method: str, stage: int = -1, parts: tuple[str, ...] | None = None
) -> EditRequest:
    """Snapshot the document into a request for ``METHODS[method].engine[stage]``; options
    the loaded model cannot use (a part they need is not in ``parts``) are left out."""
    m = METHODS[method]
    engine_method = m.engine[stage]
    s = doc.settings
    declared = ENGINE_METHODS[engine_method].options
    params = [p for p in m.params if offered(p, parts)]
    opts = {p.key: value(doc, method, p) for p in params if p.option and p.key in declared}
    if "batch_size" in declared:
        opts["batch_size"] = int(s.get("batch_size", 1))
    has_mask = bool(doc.mask.any())
    has_strokes = bool(doc.strokes[..., 3].any())
    common = {
        "prompt": s.get("prompt", ""),
        "negative_prompt": s.get("negative_prompt", ""),
        **{k: common_value(doc, method, k) for k in COMMON},
    }
    image = doc.image
    strokes = doc.strokes if has_strokes else None
    mask = doc.mask if has_mask else None
    h, w = doc.size
    if engine_method == "generate":
        return EditRequest("generate", width=w, height=h, options=opts, **common)
    if engine_method == "edit_generated":
        source = generation_of(doc)
        if source["prompt"].strip() == common["prompt"].strip():  # (word:w) is an edit
            raise NeedsInput(
                "Edit the prompt first: it is still the one the image was generated with."
            )
        opts = {**opts, "source_prompt": source.pop("prompt"), "eta": source.pop("eta")}
        # the picture itself: the blend region is found on it, and kept outside that region
        fields = {**common, **source}
        return EditRequest("edit_generated", image=image, mask=mask, options=opts, **fields)
    # the panel's DiffEdit edits inside a mask (made by its first stage, or painted)
    needs_mask = ENGINE_METHODS[engine_method].mask == "required" or engine_method == "diffedit"
    if mask is None and needs_mask:
        what = "Paint a mask" if engine_method == "repaint" else "Make or paint a mask"
        raise NeedsInput(f"{what} first: {m.label} edits only inside the mask.")
    if engine_method == "diffedit_mask":
        return EditRequest("diffedit_mask", image=image, strokes=strokes, options=opts, **common)
    if engine_method == "diffedit":  # with a mask, the mask options are not used
        opts = {"reference_prompt": opts["reference_prompt"]}
    if engine_method == "invert":
        common["prompt"] = value(doc, method, Param.of("source_prompt", SOURCE_PROMPT))
        return EditRequest("invert", image=image, options=opts, **common)
    if engine_method == "reedit":
        if doc.inversion is None:
            raise NeedsInput("Invert the image first (the Invert button), then re-edit.")
        if doc.inversion_source != image_key(image):
            raise NeedsInput(
                "The image changed since it was inverted: press Invert again, then re-edit."
            )
        options = {**opts, "inversion": doc.inversion}
        return EditRequest("reedit", image=image, mask=mask, options=options, **common)
    return EditRequest(
        engine_method, image=image, strokes=strokes, mask=mask, options=opts, **common
    )


NOT_GENERATED = (
    "Edit prompt needs a generated image: Generate one and Apply it (or open a PNG this "
    "editor generated), then change the prompt and Run. For a photo, use Invert & re-edit."
)


def generation_of(doc: Document) -> dict[str, Any]:
    """The request fields that replay the generation of the image layer
    (``engine.metadata.replay_of``: ``prompt``, ``negative_prompt``, ``steps``, ``guidance``,
    ``seed``, ``width``, ``height``, ``eta``). ``NeedsInput`` says what to do when the image
    was not generated (or its parameters are unknown)."""
    p = doc.image_parameters()
    if p is None or p.get("method", "generate") not in ("generate", "edit_generated"):
        generated = any(e.parameters.get("method") == "generate" for e in doc.history)
        if generated and p is None:
            raise NeedsInput(
                "Apply the generated result first (Apply under Results), then change the "
                "prompt and Run Edit prompt. For a photo, use Invert & re-edit."
            )
        raise NeedsInput(NOT_GENERATED)
    try:
        out = replay_of(p)
    except NotReplayable as e:
        lack = str(e).removeprefix("its parameters lack ")
        raise NeedsInput(
            NOT_GENERATED if lack == str(e) else f"{NOT_GENERATED} (Its parameters lack {lack}.)"
        ) from None
    h, w = out["height"], out["width"]
    if (h, w) != doc.size:
        raise NeedsInput(
            f"The image was generated at {w}x{h} but is now {doc.size[1]}x{doc.size[0]}: "
            "Edit prompt replays the generation at its size. Use Invert & re-edit instead."
        )
    return out


def source_prompt(doc: Document, method: str) -> str | None:
    """The prompt an attention-controlled edit starts from, as far as the panel knows
    (Invert & re-edit: its Source prompt field; Edit prompt: the image's generation)."""
    if method == "reedit":
        return value(doc, method, Param.of("source_prompt", SOURCE_PROMPT))
    if method == "edit_generated":
        try:
            return generation_of(doc)["prompt"]
        except NeedsInput:
            return None
    return None


def _words(text: str) -> list[str]:
    out = []
    for w in plain_text(text).split():
        w = w.strip(string.punctuation)
        if w:
            out.append(w)
    return out


def changed_words(source: str, target: str) -> list[str]:
    """The words that differ between two prompts (word-level diff, weights stripped): the
    target's replaced or inserted words, or the source's removed ones when only words were
    removed, and the target's re-weighted words. What local blend uses when Blend words is
    empty."""
    a, b = _words(source), _words(target)
    sm = difflib.SequenceMatcher(None, [w.lower() for w in a], [w.lower() for w in b])
    added, removed = [], []
    for op, i0, i1, j0, j1 in sm.get_opcodes():
        if op != "equal":
            added += b[j0:j1]
            removed += a[i0:i1]
    # re-weighted words, (word:1.3), change too
    weighted = [w for t, x in parse_weights(target) if x != 1.0 for w in _words(t)]
    return list(dict.fromkeys((added or removed) + weighted))


def word_key(text: str) -> str:
    """How a prompt word is matched against attention maps: weights and punctuation
    stripped, case ignored."""
    return " ".join(w.lower() for w in _words(text))


def random_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31 - 1))


# ---- settings from files: checked against the same bounds the panel offers ------------------


def _top() -> dict[str, Param]:
    """The common fields as the panel holds them; the seed box holds 0 … 2³¹ − 1 (a QSpinBox
    is 32-bit), a narrower range than the engine accepts."""
    out = {k: Param.of(k, spec, option=False) for k, spec in COMMON.items()}
    out["seed"] = dataclasses.replace(out["seed"], lo=0, hi=2**31 - 1)
    return out


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
    if p.kind is bool or isinstance(p.default, bool):
        if not isinstance(v, bool):
            raise SettingsError(f"{label} is {v!r}; it must be true or false.")
        return v
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
    top = _top()
    if key in top:
        return _check_param(top[key], v, "")
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
    if key in ("batch_count", "batch_size"):
        return _check_param(BATCH_COUNT if key == "batch_count" else BATCH_SIZE, v, "")
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
        params = {p.key: p for p in METHODS[method].params if p.option or p.key in PER_METHOD}
        where = f"{METHODS[method].label} option "
        out[method] = {k: _check_param(params[k], v, where) for k, v in opts.items() if k in params}
    return out


def check_settings(raw: Any) -> dict[str, Any]:
    """Settings from a project file → complete, valid settings (defaults for what is
    missing, unknown keys dropped); the first bad field raises ``SettingsError``."""
    if not isinstance(raw, dict):
        raise SettingsError(f"Settings are {_kind(raw)}, not a table.")
    defaults = default_settings()
    out = {**defaults, "options": {}}
    for key in defaults:
        if key in raw:
            out[key] = check_setting(key, raw[key])
    return out
