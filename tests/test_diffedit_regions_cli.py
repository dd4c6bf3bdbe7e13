"""DiffEdit's Make mask from the command line on the shipped demo model, from a demo-world
picture saved as a PNG: the default mask (snapped to the picture's regions) takes the house's
wall whole, where the guided edge alone leaves part of it out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine import cli
from engine.evaluation.evaluate_edits import iou, wall_colour_case


def _mask(capsys, tmp_path, case, *extra):
    out = tmp_path / f"mask{len(extra)}.png"
    code = cli.main(
        [
            "diffedit_mask", "--model", "builtin:demo", "-i", str(tmp_path / "scene.png"),
            "-p", case.after.caption, "-O", f"reference_prompt={case.before.caption}",
            "--steps", "50", "--seed", str(case.seed), "-o", str(out), *extra,
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    return np.asarray(Image.open(out.with_name(out.stem + "-mask.png")).convert("L")) >= 128


def test_make_mask_takes_the_wall_whole_from_a_png(tmp_path, capsys):
    # a calibration scene (seed 960,015: the nearest house's yellow walls → blue), one of
    # those the default was chosen on
    case = wall_colour_case(960_015)
    Image.fromarray(case.before.image).save(tmp_path / "scene.png")
    regions = _mask(capsys, tmp_path, case)
    guided = _mask(capsys, tmp_path, case, "--mask-upsampling", "guided")
    house = case.before.masks[case.what.split(":")[0]]
    assert iou(regions, case.region) > iou(guided, case.region) + 0.05
    # the snapped mask holds (nearly) all of the house and (nearly) nothing else
    assert regions[house].mean() > 0.95 and guided[house].mean() < 0.9
    assert (regions & ~case.region).sum() < 0.1 * case.region.sum()
