"""Whether a recoloured house reads as its new colour, judged from its pixels.

The probe reads a house's wall colour from the whole picture and is right on 90 % of the
world's own true wall edits and 60 % of roof edits (a black roof at night, a brown one at
sunset), so a colour target of 90 % cannot be shown with it. Here the world itself is the
reference: the scene is rendered once per colour of the palette, with the same light, and
each pixel the part's colour decides votes for the render it is nearest to. The edit reads
as done when most of the part votes for the new colour, that is when the larger share of
the wall (or roof) a user sees has the new colour, whatever the rest of the picture does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..world.scene import ROOF_COLOURS, WALL_COLOURS, Scene, WorldObject, redescribe, render

if TYPE_CHECKING:
    from .evaluate_edits import EditCase

PARTS = {"house_wall": ("wall", WALL_COLOURS), "house_roof": ("roof", ROOF_COLOURS)}


def nearest_house(scene: Scene) -> WorldObject | None:
    """The house the ``house_wall`` / ``house_roof`` attributes describe (the lowest in the
    picture, the nearest), or None."""
    houses = [o for o in scene.objects if o.kind == "house"]
    return max(houses, key=lambda o: o.y) if houses else None


def recolour(scene: Scene, house: str, attribute: str, colour: str) -> Scene:
    """``scene`` with house ``house``'s ``attribute`` ("house_wall" or "house_roof") set to
    ``colour``."""
    part = PARTS[attribute][0]
    change = {"new_kind_or_colour": colour} if part == "wall" else {"roof": colour}
    return redescribe(scene, house, **change)[0]


def palette_renders(scene: Scene, attribute: str) -> tuple[tuple[str, ...], np.ndarray]:
    """The palette of ``attribute`` ("house_wall" or "house_roof") and the scene rendered
    with its nearest house in each of those colours (n x H x W x 3 uint8)."""
    colours = PARTS[attribute][1]
    house = nearest_house(scene).name
    renders = [render(recolour(scene, house, attribute, c)).image for c in colours]
    return colours, np.stack(renders)


def part_pixels(renders: np.ndarray) -> np.ndarray:
    """The pixels whose colour the part decides: those that differ between the renders."""
    return (renders != renders[:1]).any(-1).any(0)


def colour_votes(image: np.ndarray, renders: np.ndarray) -> tuple[np.ndarray, int]:
    """Per palette colour, the share of the part's pixels (``part_pixels``) nearest to that
    colour's render, and how many pixels voted."""
    part = part_pixels(renders)
    x = image[part].astype(np.float32)
    r = renders[:, part].astype(np.float32)
    nearest = ((r - x[None]) ** 2).sum(-1).argmin(0)
    return np.bincount(nearest, minlength=len(renders)) / max(len(x), 1), int(part.sum())


def recoloured(case: EditCase, image: np.ndarray, share: float = 0.5) -> bool:
    """Whether more than ``share`` of the house part in ``image`` has the colour the
    ``case`` (an ``EditCase`` of a wall or roof recolouring) asks for."""
    colours, renders = palette_renders(case.before.scene, case.attribute)
    shares, _ = colour_votes(image, renders)
    new = case.after.attributes[case.attribute]
    return bool(shares[colours.index(new)] > share)
