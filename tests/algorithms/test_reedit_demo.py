"""The re-edit's blend region on the demo model, where DiffEdit's map means something."""

import pytest

from engine.evaluation.evaluate_edits import Runner, time_of_day_case, wall_colour_case
from engine.models import load_model


@pytest.mark.slow
def test_a_time_of_day_edit_changes_the_whole_picture_and_a_wall_edit_only_the_wall():
    """Calibration scenes (below the held-out ranges): a day → night edit, whose map is
    above a quarter of its peak over 81 % of the picture, runs without local blend; a wall
    colour edit (10 %) blends inside DiffEdit's mask."""
    run = Runner(load_model("builtin:demo", device="cpu"), log=lambda m: None)
    for case, whole in ((time_of_day_case(820_000), True), (wall_colour_case(520_002), False)):
        inv = run.invert(case, "ddim", 10, 7.5)
        out, _ = run("reedit", prompt=case.edit_prompt, options={"inversion": inv})
        assert (out.parameters.get("blend_region") == "whole picture") is whole
        assert ("blend_mask" in out.extras) is not whole
        changed = (out.image != case.before.image).any(-1).mean()
        assert changed > 0.9 if whole else changed < 0.5
