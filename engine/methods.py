"""One description of every method: its inputs and its options, declared once.

The engine validates requests from these declarations (``engine.jobs.base``), the CLI builds
each sub-command's flags and ``--help`` from them, the editor builds each method's form from
them and PNG metadata is read back through them. ``python -m engine methods --json`` prints
them. A runner attaches itself with ``engine.jobs.job(name)``; a new method is one
``MethodSpec`` here plus its runner module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .algorithms.inversion import METHODS as INVERSION_METHODS
from .algorithms.repaint import SAMPLERS


@dataclass(frozen=True)
class OptionSpec:
    """One request field or method option: its type, default and what it accepts."""

    kind: type | None  # int, float, bool, str; None: an object its runner checks
    default: Any
    help: str  # one line in plain words
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    label: str = ""  # how people see it (forms, error messages); default: from the name
    step: float = 1  # the editor's spin-box increment
    calibrated: str = ""  # the figure that chose the default, where one did
    form: bool = True  # offered in the editor's form
    requires: str = ""  # a part the loaded model must have ("classifier"), else not offered

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (``methods --json``)."""
        out = {
            "type": self.kind.__name__ if self.kind else "object",
            "default": self.default,
            "help": self.help,
        }
        if self.lo is not None:
            out["min"], out["max"] = self.lo, self.hi
        if self.choices:
            out["choices"] = list(self.choices)
        if self.calibrated:
            out["calibrated"] = self.calibrated
        if self.requires:
            out["requires"] = self.requires
        return out


def label_of(name: str, spec: OptionSpec) -> str:
    return spec.label or name.replace("_", " ").capitalize()


# The request fields every method shares. Steps are capped again by the loaded schedule.
COMMON: dict[str, OptionSpec] = {
    "steps": OptionSpec(
        int,
        25,
        "How many times the picture is refined: more is slower and a little finer; "
        "20-30 is usually enough.",
        1,
        1000,
        label="Steps",
    ),
    "guidance": OptionSpec(
        float,
        7.5,
        "How strictly the picture follows the prompt: higher obeys the words more but looks "
        "harsher; lower is more natural but may ignore words. 5-9 suits most prompts.",
        0.0,
        50.0,  # far beyond any useful value; larger ones only saturate to black
        label="Guidance",
        step=0.5,
    ),
    "strength": OptionSpec(
        float,
        0.6,
        "How much the picture may change: 0 keeps it, 1 ignores it. Low (0.3) tidies up, "
        "high (0.7) turns rough strokes into new content.",
        0.0,
        1.0,
        label="Strength",
        step=0.05,
    ),
    # what torch.Generator.manual_seed accepts
    "seed": OptionSpec(
        int,
        0,
        "The random start: the same seed and settings give the same picture; another seed "
        "gives a variation.",
        -(2**63),
        2**64 - 1,
        label="Seed",
    ),
}

ETA = OptionSpec(
    float,
    0.0,
    "Fresh randomness added at each step (0: none, 1: as much as the ddpm sampler).",
    0.0,
    1.0,
    step=0.1,
)
# generate and SDEdit: ddpm is DDIM's step with eta = 1 (Song et al. 2021, eq. 16); lcm is
# multistep consistency sampling (Luo et al. 2023, Alg. 3) for few-step models
SAMPLER = OptionSpec(
    str,
    "ddim",
    "How each step removes noise: ddim is smooth and repeatable; ddpm adds fresh randomness "
    "every step (more varied detail, wants more steps); lcm is for few-step models (LCM, "
    "Turbo, Hyper, TCD or their LoRAs): 2-8 steps, and every step runs at any strength.",
    choices=("ddim", "ddpm", "lcm"),
    label="Sampler",
)
# several pictures from one pass of the model (A1111's batch size); the seeds follow on
BATCH_SIZE = OptionSpec(
    int,
    1,
    "How many pictures one pass of the model makes, with seeds seed, seed + 1, …: faster "
    "per picture than one after the other where the device has memory for all of them.",
    1,
    8,
    label="Batch size",
    form=False,  # the editor shows it beside the batch count
)
# Classifier guidance (Dhariwal & Nichol 2021): offered where the model ships a noise-aware
# classifier (the demo model does); combines with classifier-free guidance
CLASSIFIER_GUIDANCE = {
    "classifier_targets": OptionSpec(
        str,
        "",
        "What the model's classifier should see in the picture, comma-separated (e.g. night, "
        "snow ground, 2 houses); needs a classifier scale above 0.",
        label="Classifier targets",
        requires="classifier",
    ),
    "classifier_scale": OptionSpec(
        float,
        0.0,
        "How hard the classifier pulls the picture towards the targets (0: off). Higher makes "
        "the targets more certain and the pictures more alike.",
        0.0,
        20.0,
        label="Classifier scale",
        step=0.5,
        requires="classifier",
    ),
}
FEATHER = OptionSpec(
    float,
    0.0,
    "Softens the edge of the changed area over this many pixels, inside the mask, so it "
    "blends in (0: automatic, 1 % of the picture's side). Pixels outside never change.",
    0.0,
    256.0,  # capped: the cost grows with the radius
    label="Feather px",
)
MASK_GROW = OptionSpec(
    int,
    0,
    "Lets the edit reach a little beyond your mask (in the model's 8-pixel blocks), so "
    "new content has room to blend; 0 keeps it strictly inside.",
    0,
    64,
    label="Mask grow",
    form=False,
)
DIFFEDIT_MASK = {
    "reference_prompt": OptionSpec(
        str,
        "",
        "Words for what the picture shows now, where it should change (may be empty): the "
        "mask covers where the prompt and these words disagree.",
        label="Reference",
    ),
    "n_samples": OptionSpec(
        int,
        10,
        "How many tries are averaged to find the mask: more is steadier and slower.",
        1,
        256,
        label="Mask samples",
    ),
    "threshold": OptionSpec(
        float,
        0.5,
        "How sure the mask must be: lower covers more of the picture, higher only where "
        "the change is clear.",
        0.0,
        1.0,
        step=0.05,
    ),
    "mask_threshold": OptionSpec(
        str,
        "fixed",
        "Where the mask is cut: fixed uses Threshold (the paper's 0.5); otsu picks the cut "
        "that best splits this picture's map into changed and unchanged.",
        choices=("fixed", "otsu"),
        label="Mask cut",
    ),
    "mask_upsampling": OptionSpec(
        str,
        "segments",
        "How the coarse map is brought to pixels: segments takes whole areas of the picture "
        "(a wall, a tree) that the map covers a good part of, and leaves out those it only "
        "touches; guided makes the mask's edge follow the picture's edges and colours; "
        "bilinear is smooth (the paper's setting).",
        choices=("bilinear", "guided", "segments"),
        label="Mask edges",
        calibrated="mean IoU on 80 calibration scenes (seeds 860,000+ and 880,000+): guided "
        "by colour 0.610, segments 0.698; on 40 development scenes (3,500,000+) 0.662 and "
        "0.679; reported once on 60 final scenes (7,300,000+): 0.620 and 0.708. Before: "
        "on 40 calibration scenes (560,000+ and 660,000+) bilinear 0.543, guided by grey "
        "levels 0.598, by colour 0.613; Otsu's cut 0.45, 20 or 40 noises 0.545/0.547 and "
        "noise levels 0.3-0.7 did not help; picked on 40 development scenes (3,500,000+): "
        "guided by colour 0.662, by grey levels 0.619, bilinear 0.591",
    ),
    "mask_strength": OptionSpec(
        float, 0.5, "How far the image is noised to estimate the mask.", 0.01, 1.0, form=False
    ),
    "batch_size": OptionSpec(
        int, 2, "Noises per model call (previews stream between calls).", 1, 256, form=False
    ),
}

# Prompt-to-Prompt (Hertz et al. 2022): the authors' word-swap setting (cross-attention
# replaced for 80 % of the steps, self-attention for 40 %); the blend threshold is ours, on
# our relative maps (calibrated below; the paper thresholds raw maps at 0.3). Tried on 8
# calibration scenes: τ 0.6/0.3, 0.4/0.2, 0.8/0 and 0.3/0 were no better than 0.8/0.4
ATTENTION_CONTROL = {
    "keep_layout": OptionSpec(
        float,
        0.8,
        "How long the edit keeps where things are (the share of steps that reuse the "
        "source's word-to-region attention). Lower it when a swapped object needs a new shape "
        "or the light of the whole picture changes.",
        0.0,
        1.0,
        label="Keep layout",
        step=0.05,
    ),
    "keep_detail": OptionSpec(
        float,
        0.4,
        "How long the edit keeps the source's fine structure (the share of steps that reuse "
        "its self-attention). Higher keeps more of the picture; lower lets the edit restyle it.",
        0.0,
        1.0,
        label="Keep detail",
        step=0.05,
    ),
    "local_blend": OptionSpec(
        bool,
        True,
        "Change only where the changed words are; everything else stays as it was. Turn it "
        "off for edits of the whole picture (style, light); an edit whose Blend region is "
        "diffedit turns it off itself when it finds one.",
        label="Local blend",
    ),
    "blend_words": OptionSpec(
        str,
        "",
        "Words whose region may change, comma-separated; empty: the words that differ between "
        "the two prompts.",
        label="Blend words",
    ),
    "painted_mask": OptionSpec(
        str,
        "replace",
        "What a painted mask does: replace the words' region (only your mask may change) or "
        "intersect it (only where your mask and the changed words' region overlap).",
        choices=("replace", "intersect"),
        label="Painted mask",
    ),
    "blend_threshold": OptionSpec(
        float,
        0.5,
        "Share of a word's strongest attention that counts as its region.",
        0.05,
        0.95,
        form=False,
        calibrated="on 20 calibration scenes (walls 520,000+ and 530,000+, kinds 720,000+ and "
        "730,000+; "
        "null-text and direct): the edit succeeded as often at 0.3 and 0.5 and less above "
        "(0.7: -6 points, 0.9: -25), background PSNR rose 0.4 dB from 0.3 to 0.5",
    ),
}


@dataclass
class MethodSpec:
    """One engine method: what it needs, what it reads, its options and its runner."""

    name: str
    help: str
    options: dict[str, OptionSpec] = field(default_factory=dict)
    common: tuple[str, ...] = ("steps", "guidance", "strength", "seed")  # fields it reads
    image: bool = True  # needs an input image
    mask: str = "optional"  # "required", "optional" or "unused"
    strokes: bool = False  # composites a stroke layer over the image
    reference_prompt: bool = False
    inversion: str = ""  # "makes" or "needs" an inversion
    stochastic: bool = True  # the seed changes the result
    runner: Callable | None = None  # set by engine.jobs.job(name)

    def inputs(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "mask": self.mask,
            "strokes": self.strokes,
            "reference_prompt": self.reference_prompt,
            "inversion": self.inversion or None,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "help": self.help,
            "inputs": self.inputs(),
            "stochastic": self.stochastic,
            "common": {k: COMMON[k].describe() for k in self.common},
            "options": {k: o.describe() for k, o in self.options.items()},
        }


# where Local blend lets an attention-controlled edit change (re-edit and Edit prompt alike;
# engine.jobs.attention_edits.diffedit_blend)
BLEND_MASK = OptionSpec(
    str,
    "diffedit",
    "Where Local blend lets the edit change: diffedit finds where the new "
    "prompt and the source prompt disagree about the picture (DiffEdit's "
    "mask, shown as it forms) and keeps everything else exactly as it was "
    "(when they disagree about the whole picture, as for the time of day, "
    "all of it may change); attention uses the changed words' attention "
    "maps (Prompt-to-Prompt's local blend; Blend words apply to it).",
    choices=("diffedit", "attention"),
    label="Blend region",
    calibrated="on 8 calibration wall-colour scenes (540,000+; ddim, "
    "null-text, direct inversion): background PSNR 41-48 dB against 19-27 dB "
    "with attention, the wall changed in 75-100 % against 62-88 %; on 8 "
    "object-kind scenes (740,000+; null-text, direct): 45-49 dB against "
    "26-29 dB, changed 75-88 % against 38-62 %; on the final scenes the "
    "background held but walls changed less often than with attention "
    "(50-70 % against 70-90 %, README: Measured); Edit prompt on 12 generated pictures per "
    "kind (captions of walls 540,000+, kinds 740,000+, time of day 820,000+): changed "
    "10 / 11 / 11 of 12 against attention's 11 / 4 / 2; on 20 final ones per kind "
    "(6,900,000+): walls 75 % against 85 %, kinds 67 % against 58 %, time of day 100 % "
    "against 0 %",
)

WHOLE_PICTURE = OptionSpec(
    float,
    0.3,
    "When DiffEdit's map is above a quarter of its peak over more than this "
    "share of the picture, the prompts disagree about all of it (time of day, "
    "light): the edit changes the whole picture, local blend off; 1: never.",
    0.0,
    1.0,
    form=False,
    calibrated="on calibration scenes (20 per kind from 520,000+ and "
    "560,000+ with the kinds' offsets of evaluate_p2p): time of day above "
    "0.3 in 37 of 40 (0.18-1.00); wall, roof, object-kind and snow-cap edits "
    "0.04-0.25, one wall 0.31 (1 of 160 above)",
)


def finds_blend_region(option: Callable[[str], Any], painted: bool) -> bool:
    """Whether an attention-controlled edit first finds its blend region with DiffEdit, from
    its options (``option(key)``: the value given, else the default): local blend on, Blend
    region diffedit, and no ``painted`` mask or one it is to intersect. The engine's jobs and
    the editor's progress bar both ask this."""
    wanted = option("local_blend") and option("blend_mask") == "diffedit"
    return bool(wanted) and (not painted or option("painted_mask") == "intersect")


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec(
            "generate",
            "Text to image at the given size.",
            {
                "sampler": SAMPLER,
                "eta": dataclasses.replace(ETA, form=False),
                **CLASSIFIER_GUIDANCE,
                "batch_size": BATCH_SIZE,
            },
            common=("steps", "guidance", "seed"),
            image=False,
            mask="unused",
        ),
        MethodSpec(
            "sdedit",
            "Noise the image (with its colour strokes) to the chosen strength, then denoise "
            "with the prompt (Meng et al. 2021); with a mask only the masked area changes.",
            {
                "mask_grow": dataclasses.replace(MASK_GROW, default=1, form=True),
                "feather": FEATHER,
                "sampler": SAMPLER,
                "eta": dataclasses.replace(ETA, form=False),
                **CLASSIFIER_GUIDANCE,
                "batch_size": BATCH_SIZE,
            },
            strokes=True,
        ),
        MethodSpec(
            "repaint",
            "Regenerate the masked area; the rest is re-noised from the original every step "
            "so both harmonise (Lugmayr et al. 2022). With an inpainting model, describe what "
            "the area should show ('a pine tree'): a caption of the whole picture lets it draw "
            "any of the things the caption names there.",
            {
                "denoise": OptionSpec(
                    float,
                    1.0,
                    "How much the masked area may change: 1 paints it anew; lower keeps more "
                    "of what Masked content starts it from (its colours and shapes).",
                    0.01,
                    1.0,
                    label="Denoising strength",
                    step=0.05,
                ),
                "masked_content": OptionSpec(
                    str,
                    "noise",
                    "What the masked area starts from: noise paints it anew; original starts "
                    "from what is there (lower Denoising strength to keep it); fill starts "
                    "from the surrounding colours blurred into the hole (to remove an object).",
                    choices=("noise", "original", "fill"),
                    label="Masked content",
                ),
                "soft_mask": OptionSpec(
                    bool,
                    False,
                    "Read the mask's grey levels as how much may change (differential "
                    "diffusion): white changes as much as Denoising strength allows, mid-grey "
                    "half as much, black nothing, so a soft brush or a feathered mask fades "
                    "the edit out. Starts from the original, without resampling.",
                    label="Soft mask",
                ),
                "only_masked": OptionSpec(
                    bool,
                    False,
                    "Work on a crop around the mask at the model's full working size and paste "
                    "it back: much more detail for a small area of a large picture. Describe "
                    "the crop, not the whole picture, in the prompt.",
                    label="Only masked",
                ),
                "padding": OptionSpec(
                    int,
                    32,
                    "With Only masked: how many pixels around the mask the crop includes, so "
                    "the new content fits its surroundings.",
                    0,
                    2048,
                    label="Only masked padding px",
                ),
                "jump_length": OptionSpec(
                    int,
                    5,
                    "How far back each resampling round goes, in steps: longer rounds blend "
                    "the area with its surroundings over larger shapes.",
                    1,
                    1000,
                ),
                "jump_n_sample": OptionSpec(
                    int,
                    3,
                    "How many times each stretch is redone so the area blends in: more fits "
                    "better and is slower (1: no resampling, the default with an inpainting "
                    "model, which sees the area's surroundings itself).",
                    1,
                    100,
                    label="Resamples",
                ),
                "sampler": OptionSpec(
                    str,
                    "ddpm",
                    "How each step removes noise: ddpm (fresh randomness each step) found "
                    "new objects more often here; ddim is smoother.",
                    choices=SAMPLERS,
                    calibrated="on 24 demo-world calibration scenes (seeds 530,000+ and "
                    "540,000+) the new object appeared in 79 % with ddpm and 67 % with ddim",
                ),
                "eta": dataclasses.replace(
                    ETA, help="Fresh randomness per step (the ddim sampler only).", form=False
                ),
                # Not grown: the soft border cells then stay partly known, so the decoded
                # border matches the original.
                "mask_grow": dataclasses.replace(
                    MASK_GROW,
                    calibrated="on 80 calibration scenes (seeds 530,000+) the new object "
                    "appeared in 71 % at grow 0 (grow 1: 65 %; no resampling: 52 %); on 40 of "
                    "them the seam ratio fell 2.9 → 1.9 and grow 2 gave 45 %",
                ),
                "feather": dataclasses.replace(
                    FEATHER,
                    help="Softens the edge of the inpainted area over this many pixels, "
                    "inside the mask, so it blends in (0: automatic, 1 % of the picture's "
                    "side, at least 4 px: half of the model's 8-pixel blocks). Pixels "
                    "outside never change.",
                    label="Mask blur px",
                ),
            },
            common=("steps", "guidance", "seed"),
            mask="required",
            strokes=True,
        ),
        MethodSpec(
            "diffedit_mask",
            "DiffEdit's first step: a mask from where the query and reference prompts "
            "disagree (Couairon et al. 2022).",
            DIFFEDIT_MASK,
            common=("steps", "seed"),
            mask="unused",
            strokes=True,
            reference_prompt=True,
        ),
        MethodSpec(
            "diffedit",
            "DiffEdit: the mask (computed first when none is given), then the edit inside it "
            "to the chosen strength.",
            # the mask options too, for when no mask is given
            {
                **DIFFEDIT_MASK,
                "mask_grow": MASK_GROW,
                "feather": dataclasses.replace(FEATHER, form=False),
            },
            strokes=True,
            reference_prompt=True,
        ),
        MethodSpec(
            "invert",
            "Invert the image under the prompt, for re-editing (Mokady et al. 2022).",
            {
                "inversion": OptionSpec(
                    str,
                    "null_text",
                    "How the photo is turned into noise that redraws it: null_text and direct "
                    "redraw it most faithfully; ddim is fastest and drifts most.",
                    choices=INVERSION_METHODS,
                ),
                "fixed_point": OptionSpec(
                    int, 0, "Extra fixed-point iterations per step.", 0, 20, form=False
                ),
                "reconstruct": OptionSpec(
                    bool,
                    False,
                    "Also decode a reconstruction (ddim, negative_prompt, direct).",
                    form=False,
                ),
                "save": OptionSpec(
                    None, None, "A file path: also write the inversion there.", form=False
                ),
            },
            common=("steps", "guidance"),
            mask="unused",
            inversion="makes",
            stochastic=False,
        ),
        MethodSpec(
            "reedit",
            "Regenerate an inverted image with a changed prompt, reusing its inversion.",
            {
                "inversion": OptionSpec(
                    None,
                    None,
                    "The id an invert job gave (in the app) or an inversion file.",
                    form=False,
                ),
                "depth": OptionSpec(
                    float,
                    1.0,
                    "How much of the picture may change: 1 can change anything (time "
                    "of day, new objects); about 0.4 keeps shapes and changes colours.",
                    0.01,
                    1.0,
                    step=0.05,
                ),
                "mask_grow": dataclasses.replace(MASK_GROW, default=1),
                "feather": dataclasses.replace(FEATHER, form=False),
                "control": OptionSpec(
                    str,
                    "p2p",
                    "Keep the picture: the edit reuses the photo's attention "
                    "(Prompt-to-Prompt); none regenerates freely under the new prompt.",
                    choices=("p2p", "none"),
                    label="Attention control",
                ),
                **ATTENTION_CONTROL,
                "blend_mask": BLEND_MASK,
                "whole_picture": WHOLE_PICTURE,
            },
            common=(),
            image=False,  # the inversion keeps its source image
            inversion="needs",
            stochastic=False,
        ),
        MethodSpec(
            "edit_generated",
            "Edit a generated image by editing its prompt: its seed and settings replay it "
            "beside the edit, which keeps its layout (Prompt-to-Prompt, Hertz et al. 2022). "
            "The image itself is optional: given, DiffEdit's blend region is found on it and "
            "the result keeps its pixels outside that region; not given, it is regenerated "
            "first when the blend region needs it.",
            {
                "source_prompt": OptionSpec(
                    str, "", "The prompt the image was generated with.", label="Source prompt"
                ),
                "eta": dataclasses.replace(ETA, form=False),
                **ATTENTION_CONTROL,
                "blend_mask": BLEND_MASK,
                "whole_picture": WHOLE_PICTURE,
            },
            common=("steps", "guidance", "seed"),
            image=False,
            mask="optional",
        ),
    )
}

NAMES = tuple(METHODS)


def spec(method: str) -> MethodSpec:
    return METHODS[method]


def common_default(name: str) -> Any:
    return COMMON[name].default


def describe_all() -> dict[str, Any]:
    """Every method with its inputs and options (``python -m engine methods --json``)."""
    return {
        "common": {k: o.describe() for k, o in COMMON.items()},
        "methods": {name: m.describe() for name, m in METHODS.items()},
    }
