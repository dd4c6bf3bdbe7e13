"""The wall / roof colour rule reads the world's true recolouring as done and the source as
not, decides a half-recoloured wall by its larger share, and survives the demo VAE."""

import numpy as np
import pytest

from engine.evaluation import evaluate_edits as ev
from engine.evaluation.house_colours import (
    colour_votes,
    palette_renders,
    part_pixels,
    recoloured,
)


@pytest.mark.parametrize("make", [ev.wall_colour_case, ev.roof_colour_case])
def test_true_edit_reads_as_done_and_the_source_does_not(make):
    for case in ev.find_cases(make, 4, 700_000):
        assert recoloured(case, case.after.image)
        assert not recoloured(case, case.before.image)


def test_a_partly_recoloured_wall_is_read_by_its_larger_share():
    case = ev.find_cases(ev.wall_colour_case, 1, 700_000)[0]
    _, renders = palette_renders(case.before.scene, case.attribute)
    part = np.argwhere(part_pixels(renders))
    for share, done in ((0.3, False), (0.7, True)):
        image = case.before.image.copy()
        ys, xs = part[: int(share * len(part))].T  # the wall's top rows take the new colour
        image[ys, xs] = case.after.image[ys, xs]
        assert recoloured(case, image) == done
        votes, n = colour_votes(image, renders)
        assert n == len(part) and votes.sum() == pytest.approx(1.0)


def test_walls_read_the_same_after_the_demo_vae():
    from engine.models import load_model

    b = load_model("builtin:demo", device="cpu")
    for case in ev.find_cases(ev.wall_colour_case, 3, 700_000):
        assert recoloured(case, b.decode(b.encode(case.after.image)))
        assert not recoloured(case, b.decode(b.encode(case.before.image)))
