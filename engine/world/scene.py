"""The demo world: seeded scene graphs of small landscapes, rendered with exact ground truth.

``sample_scene(seed)`` draws a :class:`Scene` (a frozen dataclass scene graph);
``render(scene, size)`` rasterises it (see ``raster``) and returns a
:class:`RenderResult` with the uint8 RGB image, exact boolean masks per region and object
instance, a caption (``captions.py``) and the attributes as a dict and as a vector laid out by
``ATTRIBUTE_SPEC``. Everything is a pure function of the seed (and size).

Rules of the world: objects on water are boats only; pine trees, round trees, houses and
rocks stand on land; 0-3 objects per scene; all houses of a sampled scene share one wall
colour and one roof colour (the ``house_wall``/``house_roof`` attributes are those of the
nearest house, which only matters after a :func:`redescribe` edit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import raster as wr

TIMES = ("day", "sunset", "night")
GROUNDS = ("grass", "sand", "snow", "water")
OBJECT_KINDS = ("pine_tree", "round_tree", "house", "rock", "boat")
LAND_KINDS = ("pine_tree", "round_tree", "house", "rock")
WALL_COLOURS = ("red", "white", "yellow", "blue")
ROOF_COLOURS = ("red", "brown", "grey", "black")
REGION_NAMES = ("sky", "ground", "mountains", "water")
MAX_OBJECTS = 3

# The attribute vector: one integer class index per entry, in this order.
# Every attribute is categorical; ``classes`` lists the values the index refers to.
ATTRIBUTE_SPEC: tuple[tuple[str, tuple], ...] = (
    ("time_of_day", TIMES),
    ("ground", GROUNDS),
    ("has_mountains", (False, True)),
    ("snow_caps", (False, True)),
    ("n_pine_tree", (0, 1, 2, 3)),
    ("n_round_tree", (0, 1, 2, 3)),
    ("n_house", (0, 1, 2, 3)),
    ("n_rock", (0, 1, 2, 3)),
    ("n_boat", (0, 1, 2, 3)),
    ("house_wall", ("none",) + WALL_COLOURS),
    ("house_roof", ("none",) + ROOF_COLOURS),
    ("has_sun", (False, True)),
    ("has_moon", (False, True)),
)
ATTRIBUTE_NAMES = tuple(name for name, _ in ATTRIBUTE_SPEC)
ATTRIBUTE_CLASSES = tuple(len(classes) for _, classes in ATTRIBUTE_SPEC)

# Objects keeping fewer visible pixels than this, or less than this share of what was drawn
# of them, are dropped from the scene before captioning.
MIN_VISIBLE_PIXELS = 6
MIN_VISIBLE_FRACTION = 0.3


@dataclass(frozen=True)
class Celestial:
    kind: str  # "sun" or "moon"
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Cloud:
    x: float  # centre
    y: float  # flat bottom
    width: float
    height: float
    seed: int


@dataclass(frozen=True)
class Ridge:
    base: float  # y of the ridge's lowest top point
    amplitude: float
    roughness: float
    seed: int


@dataclass(frozen=True)
class Hill:
    amplitude: float
    freq: float
    phase: float
    shade: float


@dataclass(frozen=True)
class WorldObject:
    kind: str  # one of OBJECT_KINDS
    name: str  # "<kind>_<i>", i counting that kind from far to near
    x: float  # centre
    y: float  # ground contact (depth: larger y = nearer = bigger)
    seed: int
    flip: bool = False
    wall: str | None = None  # houses only
    roof: str | None = None  # houses only


@dataclass(frozen=True)
class Scene:
    seed: int
    time_of_day: str
    ground: str
    horizon: float
    celestial: Celestial | None
    clouds: tuple[Cloud, ...]
    ridges: tuple[Ridge, ...]  # far to near
    snow_caps: bool
    hills: tuple[Hill, ...]
    objects: tuple[WorldObject, ...]  # far to near (drawing order)
    caption_seed: int = 0

    def object(self, name: str) -> WorldObject:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"no object named {name!r} in scene {self.seed}")


@dataclass
class RenderResult:
    image: np.ndarray  # uint8 HxWx3 RGB
    masks: dict[str, np.ndarray]  # name -> bool HxW; regions always present, may be empty
    caption: str
    attributes: dict
    attribute_vector: np.ndarray  # int64, laid out by ATTRIBUTE_SPEC
    scene: Scene  # the scene actually drawn (hidden objects removed)
    labels: np.ndarray = field(repr=False)  # uint8 HxW index into label_names
    label_names: list[str] = field(repr=False)


# --------------------------------------------------------------------------- sampling


def _place_objects(rng, kinds, horizon, water):
    placed = []  # (x, y, w)
    y_lo = horizon + (0.05 if water else 0.06)
    y_hi = 0.93
    for kind in kinds:
        for _ in range(25):
            y = float(rng.uniform(y_lo, y_hi))
            w, h = wr.object_extent(kind, wr.depth_unit(y, horizon))
            if y - h < 0.03:
                continue
            x = float(rng.uniform(0.03 + w / 2, 0.97 - w / 2)) if w < 0.9 else 0.5
            if all(abs(x - px) > 0.45 * (w + pw) for px, _, pw, _ in placed):
                placed.append((x, y, w, kind))
                break
    return placed


def sample_scene(seed: int) -> Scene:
    """A random scene graph, a pure function of ``seed``."""
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    tod = TIMES[rng.choice(3, p=[0.45, 0.3, 0.25])]
    ground = GROUNDS[rng.choice(4, p=[0.35, 0.2, 0.18, 0.27])]
    horizon = float(rng.uniform(0.52, 0.66))

    n_ridges = int(rng.choice(3, p=[0.25, 0.4, 0.35]))
    ridges = []
    for i in range(n_ridges):
        near = i == n_ridges - 1 and n_ridges == 2
        amp = rng.uniform(0.1, 0.2) if near else rng.uniform(0.2, 0.34)
        ridges.append(
            Ridge(
                base=float(horizon - rng.uniform(0.0, 0.04)),
                amplitude=float(amp),
                roughness=float(rng.uniform(0.4, 0.58)),
                seed=int(rng.integers(1 << 31)),
            )
        )
    snow_caps = bool(n_ridges > 0 and rng.random() < (0.75 if ground == "snow" else 0.35))

    celestial = None
    if rng.random() < 0.8:
        kind = "moon" if tod == "night" else "sun"
        radius = float(rng.uniform(0.04, 0.06) if kind == "sun" else rng.uniform(0.035, 0.05))
        x = float(rng.uniform(0.1, 0.9))
        if tod == "sunset":
            y = horizon - rng.uniform(0.06, 0.2)
        else:
            y = rng.uniform(0.08, max(0.1, horizon - 0.3))
        # Keep it at least partly above the mountains.
        if ridges:
            top = min(
                float(wr.ridge_profile(r.seed, r.base, r.amplitude, r.roughness, np.array([x]))[0])
                for r in ridges
            )
            y = min(y, top - 0.3 * radius)
        y = max(float(y), radius + 0.02)
        celestial = Celestial(kind, x, float(y), radius)

    clouds = []
    for _ in range(int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15]))):
        for _ in range(10):
            w = float(rng.uniform(0.16, 0.36))
            c = Cloud(
                x=float(rng.uniform(0.0, 1.0)),
                y=float(rng.uniform(0.1, max(0.12, horizon - 0.22))),
                width=w,
                height=float(w * rng.uniform(0.3, 0.45)),
                seed=int(rng.integers(1 << 31)),
            )
            ok = celestial is None or (
                abs(c.x - celestial.x) > c.width / 2 + celestial.radius
                or abs(c.y - c.height / 2 - celestial.y) > c.height / 2 + celestial.radius
            )
            if ok:
                clouds.append(c)
                break

    hills = ()
    if ground != "water":
        hills = tuple(
            Hill(
                amplitude=float(rng.uniform(0.015, 0.05)),
                freq=float(rng.uniform(0.6, 1.8)),
                phase=float(rng.uniform(0, 2 * np.pi)),
                shade=float(rng.uniform(0.88, 0.98)),
            )
            for _ in range(int(rng.integers(1, 3)))
        )

    n_obj = int(rng.choice(MAX_OBJECTS + 1, p=[0.12, 0.3, 0.3, 0.28]))
    if ground == "water":
        kinds = ["boat"] * n_obj
    else:
        # Often several objects of one kind ("three pine trees"), otherwise a mix.
        p_kind = [0.3, 0.25, 0.27, 0.18]
        main = LAND_KINDS[rng.choice(4, p=p_kind)]
        kinds = [
            main if rng.random() < 0.55 else LAND_KINDS[rng.choice(4, p=p_kind)]
            for _ in range(n_obj)
        ]
    wall = WALL_COLOURS[rng.integers(len(WALL_COLOURS))]
    roof = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))]
    if roof == wall:
        roof = "grey" if wall == "red" else "brown"
    placed = _place_objects(rng, kinds, horizon, ground == "water")
    placed.sort(key=lambda p: p[1])  # far (small y) first
    objects = []
    for x, y, _, kind in placed:
        house = kind == "house"
        objects.append(
            WorldObject(
                kind=kind,
                name="",
                x=x,
                y=y,
                seed=int(rng.integers(1 << 31)),
                flip=bool(rng.random() < 0.5),
                wall=wall if house else None,
                roof=roof if house else None,
            )
        )
    return Scene(
        seed=int(seed),
        time_of_day=tod,
        ground=ground,
        horizon=horizon,
        celestial=celestial,
        clouds=tuple(clouds),
        ridges=tuple(ridges),
        snow_caps=snow_caps,
        hills=hills,
        objects=_renamed(objects),
        caption_seed=int(rng.integers(1 << 31)),
    )


def _renamed(objects) -> tuple[WorldObject, ...]:
    counts: dict[str, int] = {}
    out = []
    for o in objects:
        i = counts.get(o.kind, 0)
        counts[o.kind] = i + 1
        out.append(dataclasses.replace(o, name=f"{o.kind}_{i}"))
    return tuple(out)


# --------------------------------------------------------------------------- attributes


def scene_attributes(scene: Scene) -> dict:
    """The attribute dict of a scene graph (keys and values as in ``ATTRIBUTE_SPEC``)."""
    kinds = [o.kind for o in scene.objects]
    houses = [o for o in scene.objects if o.kind == "house"]
    nearest = max(houses, key=lambda o: o.y) if houses else None
    c = scene.celestial
    return {
        "time_of_day": scene.time_of_day,
        "ground": scene.ground,
        "has_mountains": bool(scene.ridges),
        "snow_caps": bool(scene.ridges) and scene.snow_caps,
        **{f"n_{k}": kinds.count(k) for k in OBJECT_KINDS},
        "house_wall": nearest.wall if nearest else "none",
        "house_roof": nearest.roof if nearest else "none",
        "has_sun": c is not None and c.kind == "sun",
        "has_moon": c is not None and c.kind == "moon",
    }


def encode_attributes(attributes: dict) -> np.ndarray:
    """Attribute dict -> int64 vector of class indices (length ``len(ATTRIBUTE_SPEC)``)."""
    return np.array([classes.index(attributes[name]) for name, classes in ATTRIBUTE_SPEC], np.int64)


def decode_attributes(vector) -> dict:
    """Inverse of :func:`encode_attributes`."""
    return {
        name: classes[int(v)] for (name, classes), v in zip(ATTRIBUTE_SPEC, vector, strict=True)
    }


# --------------------------------------------------------------------------- rendering


def _label_names(scene: Scene) -> list[str]:
    names = ["sky", "", "mountains", "ground", "water"]
    names[wr.CELESTIAL] = scene.celestial.kind if scene.celestial is not None else "celestial"
    return names + [o.name for o in scene.objects]


def _hidden(scene: Scene, labels: np.ndarray, drawn: dict[int, int]) -> tuple[bool, list[int]]:
    """(celestial hidden, indices of hidden objects) after occlusion."""
    counts = np.bincount(labels.ravel(), minlength=wr.FIRST_OBJECT_LABEL + len(scene.objects))
    sub = wr.SUPERSAMPLE**2

    def hidden(lab):
        vis = int(counts[lab])
        return vis < MIN_VISIBLE_PIXELS or vis * sub < MIN_VISIBLE_FRACTION * drawn.get(lab, 0)

    cel = scene.celestial is not None and hidden(wr.CELESTIAL)
    objs = [i for i in range(len(scene.objects)) if hidden(wr.FIRST_OBJECT_LABEL + i)]
    return cel, objs


def render(scene: Scene, size: int = 128) -> RenderResult:
    """Rasterise ``scene`` at ``size``x``size``; objects that end up hidden are removed first."""
    from .captions import caption as make_caption

    img, labels, drawn = wr.rasterise(scene, size)
    cel_hidden, hidden_objs = _hidden(scene, labels, drawn)
    if cel_hidden or hidden_objs:
        keep = [o for i, o in enumerate(scene.objects) if i not in hidden_objs]
        scene = dataclasses.replace(
            scene,
            celestial=None if cel_hidden else scene.celestial,
            objects=_renamed(keep),
        )
        img, labels, drawn = wr.rasterise(scene, size)
    names = _label_names(scene)
    masks = {name: labels == i for i, name in enumerate(names) if name and name != "celestial"}
    attributes = scene_attributes(scene)
    return RenderResult(
        image=img,
        masks=masks,
        caption=make_caption(scene),
        attributes=attributes,
        attribute_vector=encode_attributes(attributes),
        scene=scene,
        labels=labels,
        label_names=names,
    )


def render_seed(seed: int, size: int = 128) -> RenderResult:
    """``render(sample_scene(seed), size)``."""
    return render(sample_scene(seed), size)


# --------------------------------------------------------------------------- edits


def redescribe(
    scene: Scene,
    object_name: str,
    new_kind_or_colour: str | None = None,
    *,
    roof: str | None = None,
) -> tuple[Scene, str]:
    """Change ONE object and return (new scene, its caption), for edits with known regions.

    ``new_kind_or_colour`` is either an object kind (``"round_tree"``; boats stay boats and
    land objects stay on land) or, for a house, a wall colour (``"blue"``); ``roof`` sets a
    house's roof colour. The object keeps its name, place and size, and the caption keeps its
    phrasing seed, so only the words for that object change. The edited region is the union
    of the object's masks in the two renders.
    """
    obj = scene.object(object_name)
    change: dict = {}
    if new_kind_or_colour in OBJECT_KINDS:
        kind = new_kind_or_colour
        if (kind == "boat") != (obj.kind == "boat"):
            raise ValueError("boats stay on water and land objects on land")
        change["kind"] = kind
        if kind == "house" and obj.kind != "house":
            house = next((o for o in scene.objects if o.kind == "house"), None)
            change["wall"] = house.wall if house else WALL_COLOURS[obj.seed % 4]
            change["roof"] = house.roof if house else ROOF_COLOURS[(obj.seed // 4) % 4]
        elif kind != "house":
            change["wall"] = change["roof"] = None
    elif new_kind_or_colour in WALL_COLOURS:
        if obj.kind != "house":
            raise ValueError(f"{object_name} is not a house; only houses have colours")
        change["wall"] = new_kind_or_colour
    elif new_kind_or_colour is not None:
        raise ValueError(f"unknown kind or colour {new_kind_or_colour!r}")
    if roof is not None:
        if roof not in ROOF_COLOURS or (change.get("kind", obj.kind) != "house"):
            raise ValueError(f"cannot give {object_name} a {roof!r} roof")
        change["roof"] = roof
    new_obj = dataclasses.replace(obj, **change)
    objects = tuple(new_obj if o.name == object_name else o for o in scene.objects)
    new_scene = dataclasses.replace(scene, objects=objects)
    from .captions import caption as make_caption

    return new_scene, make_caption(new_scene)


def object_region(before: RenderResult, after: RenderResult, name: str) -> np.ndarray:
    """Where a ``redescribe`` of object ``name`` changed the picture: the object's pixels in
    either render, and every pixel the change touched (its shadow, anti-aliased edges)."""
    changed = (before.image != after.image).any(-1)
    return before.masks[name] | after.masks[name] | changed
