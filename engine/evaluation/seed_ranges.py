"""Which demo-world scenes each purpose may use, and the check that keeps them apart.

A scene is its seed (``world.render_seed``), so "held out" means "a seed range nothing was
trained on and nothing was tuned on". Training caches record their seeds in the model card
(a ``Training scene seeds:`` line) and in the probe's ``probe.json`` (``training_seeds``);
every evaluation refuses a range that overlaps them. Beyond that, evaluations keep three
ranges apart, by convention and by the record in the README:

- calibration: look as often as you like while choosing defaults;
- development: held-out figures during development (looked at many times: optimistic);
- final: looked at once, when a figure is reported. A range that has been looked at and
  then changed anything becomes a development range; the next report moves to a new one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SeedRange:
    start: int
    stop: int  # exclusive

    def __contains__(self, seed: int) -> bool:
        return self.start <= seed < self.stop

    def overlaps(self, other: SeedRange) -> bool:
        return self.start < other.stop and other.start < self.stop

    def __str__(self) -> str:
        return f"{self.start:,}–{self.stop - 1:,}"


CALIBRATION = SeedRange(500_000, 1_000_000)
# 1,000,000+ held the probe's and the demo model's held-out figures and every edit figure
# up to issue 21; 2,000,000+ was re-measured by a reviewer (issue 20); 3,000,000+ was the
# final range of issue 21's report: all looked at
DEVELOPMENT = SeedRange(1_000_000, 4_000_000)
# 4,000,000–4,399,999 looked at once, for the Prompt-to-Prompt figures (evaluate_p2p);
# 4,400,000–4,499,999 once, for the classifier-guidance figures (evaluate_guidance);
# 4,500,000–4,899,999 once, for issue 20's DiffEdit and inpainting figures (evaluate_edits
# --sections diffedit repaint --n 60 from 4,500,000: object-kind scenes from 4,500,000, wall
# colours from 4,600,000); 4,900,000–5,299,999 once, for issue 20's second report (the same
# sections and n from 4,900,000, after the colour-guided DiffEdit mask); 5,300,000–5,699,999
# once, for the second Prompt-to-Prompt report (evaluate_p2p --seeds 5300000 --n 10, after
# re-edits began to blend inside DiffEdit's mask); 5,700,000–6,099,999 once, for the third
# (evaluate_p2p --seeds 5700000 --n 10 --kinds time / weight: scenes 6,000,000+ and
# 6,060,000+, after an edit of the whole picture began to turn local blend off; and
# DiffEdit's map on 20 scenes per local kind from 5,700,000); 6,100,000–6,499,999 once, for
# issue 20's third report (evaluate_edits --seeds 6100000 --n 60 --sections repaint
# --inpaint-model builtin:demo-inpaint, after the inpainting fine-tune's longer run);
# 6,500,000–6,899,999 once, for its fourth (the same command from 6,500,000, after Inpaint's
# automatic mask blur grew to half a latent cell); 6,900,000–7,299,999 once, for Edit
# prompt's blend region (evaluate_edit_prompt --seeds 6900000 --n 20); 7,300,000–7,699,999
# once, for issue 20's fifth report (evaluate_edits --seeds 7300000 --n 60 --sections
# diffedit, after DiffEdit's mask began to snap to the picture's regions); 7,700,000–
# 8,099,999 once, for Edit prompt's second report (evaluate_edit_prompt --seeds 7700000 --n
# 20 --kinds wall kind); 8,100,000–8,499,999 once, for the fourth Prompt-to-Prompt report
# (evaluate_p2p --seeds 8100000 --n 10 --kinds wall); 8,500,000–8,899,999 once, for the
# fifth (evaluate_p2p --seeds 8500000 --n 10 --kinds wall weight, after (word:0) began to
# leave the word out); 8,900,000–9,299,999 once, for the sixth (evaluate_p2p --seeds
# 8900000 --n 20 --kinds kind: scenes 9,100,000+, after object-kind swaps began to be read
# by the localised new-object rule); 9,300,000–9,699,999 for issue 20's sixth report
# (evaluate_edits --seeds 9300000 --n 60 --sections repaint --inpaint-model, run for the
# shipped inpainting model and for a second stage trained with object swaps, which tied it
# and was not shipped: looked at twice); 9,700,000–10,099,999 once, for the seventh
# Prompt-to-Prompt report (evaluate_p2p --seeds 9700000 --n 20 --kinds wall / roof, after
# colours began to be read by the house's own pixels); 10,100,000–10,499,999 once, for issue
# 20's seventh report (evaluate_edits --seeds 10100000 --n 60 --sections repaint
# --inpaint-model builtin:demo-inpaint --inpaint-prompt caption object, after the new object
# alone began to be measured as a prompt); the next report starts at 10,500,000.
# The range was 4,000,000–7,999,999 until issue 20's fifth report; 8,000,000+ had never
# been used
FINAL = SeedRange(4_000_000, 12_000_000)
ISSUE_20_FINAL = SeedRange(4_500_000, 4_900_000)  # looked at once (see above)
NAMED = {"calibration": CALIBRATION, "development": DEVELOPMENT, "final": FINAL}

CARD_LINE = re.compile(r"Training scene seeds:\s*([\d,]+)\s*[–-]\s*([\d,]+)")


class SeedRangeError(ValueError):
    """An evaluation range overlaps what a model or the probe was trained on."""


def training_ranges(model_dir: Path | None, probe_dir: Path | None) -> list[tuple[SeedRange, str]]:
    """The training seed ranges recorded beside a model (its MODEL_CARD.md) and the probe."""
    out = []
    card = model_dir / "MODEL_CARD.md" if model_dir else None
    if card and card.is_file():
        for lo, hi in CARD_LINE.findall(card.read_text(encoding="utf-8")):
            out.append((SeedRange(int(lo.replace(",", "")), int(hi.replace(",", "")) + 1), card))
    info = probe_dir / "probe.json" if probe_dir else None
    if info and info.is_file():
        for lo, hi in json.loads(info.read_text()).get("training_seeds", []):
            out.append((SeedRange(lo, hi + 1), info))
    return out


def check_disjoint(used: SeedRange, model_dir: Path | None, probe_dir: Path | None) -> None:
    """Refuse an evaluation whose scenes overlap a recorded training range; a model with no
    record is refused too (nothing would show that its figures are held out)."""
    ranges = training_ranges(model_dir, probe_dir)
    if model_dir is not None and not any(Path(src).name == "MODEL_CARD.md" for _, src in ranges):
        raise SeedRangeError(
            f"{model_dir} records no training seeds (a 'Training scene seeds: A–B' line in its "
            "MODEL_CARD.md), so no held-out range can be checked against it."
        )
    for r, src in ranges:
        if used.overlaps(r):
            raise SeedRangeError(
                f"evaluation seeds {used} overlap the training seeds {r} recorded in {src}; "
                "pick a start outside every training range."
            )


def check_evaluation(used: SeedRange, model: str, probe: str | None) -> None:
    """``check_disjoint`` for an evaluation's ``--model`` spec and ``--probe`` path: the
    demo models' folders for builtin:demo and builtin:demo-inpaint (its card records the
    base model's seeds and its own), a folder path as given, no record for other built-ins
    (random weights) or single files; the shipped probe by default."""
    from engine.models import DEMO_INPAINT_DIR, DEMO_MODEL_DIR

    from ..training.probe import PROBE_DIR

    trained = {"builtin:demo": DEMO_MODEL_DIR, "builtin:demo-inpaint": DEMO_INPAINT_DIR}
    model_dir = trained.get(model)
    if model_dir is None and Path(model).is_dir():
        model_dir = Path(model)
    check_disjoint(used, model_dir, Path(probe) if probe else PROBE_DIR)
