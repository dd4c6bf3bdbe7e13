"""Captions for demo-world scenes: varied phrasing and word order over a small closed vocabulary.

A caption is a pure function of the scene graph (its ``caption_seed`` picks the phrasing). Every
caption is *complete* for the attributes in ``world.ATTRIBUTE_SPEC``: it names the time of
day, the ground, the mountains (and whether they are snowy), every object with its count,
house wall and roof colours, and the sun or moon when there is one, so the attributes can be
read back from the caption. Words are lower case, separated by spaces; the only punctuation is
``,`` (see ``WORLD_PUNCTUATION``). ``WORLD_VOCABULARY`` lists every word a caption can use.
"""

from __future__ import annotations

import numpy as np

NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
ONE_WORDS = ("a", "one")

NOUNS = {  # kind -> synonyms (singular, plural)
    "pine_tree": (("pine tree", "pine trees"), ("fir tree", "fir trees")),
    "round_tree": (("round tree", "round trees"), ("leafy tree", "leafy trees")),
    "house": (("house", "houses"), ("cottage", "cottages")),
    "rock": (("rock", "rocks"), ("boulder", "boulders")),
    "boat": (("boat", "boats"), ("sailboat", "sailboats")),
}
SMALL = "small"  # optional adjective for boats and rocks

GROUND_PP = {  # prepositional phrases for objects standing on the ground
    "grass": ("on a grassy meadow", "in a green field", "on green grass", "on grassy hills"),
    "sand": ("in a desert", "on sand dunes", "on a sandy plain"),
    "snow": ("in a snowy field", "on snowy hills", "in deep snow"),
    "water": ("on a lake", "on the sea", "on calm water"),
}
GROUND_NP = {
    "grass": ("a grassy meadow", "a green field", "green grass", "grassy hills"),
    "sand": ("a desert", "sand dunes", "a sandy plain"),
    "snow": ("a snowy field", "snowy hills", "deep snow"),
    "water": ("a lake", "the sea", "calm water"),
}
MOUNTAIN_NP = {
    False: ("mountains", "a mountain range", "rocky mountains", "distant mountains"),
    True: ("snowy mountains", "mountains with snow", "snowy peaks", "a snowy mountain range"),
}
MOUNTAIN_REL = ("below {m}", "with {m} behind", "in front of {m}")
TIME_PP = {
    "day": ("during the day", "in daylight", "by day"),
    "sunset": ("at sunset", "under a sunset sky", "at dusk"),
    "night": ("at night", "under a night sky", "under a starry sky"),
}
TIME_WORD = {"day": ("daytime", "day"), "sunset": ("sunset", "dusk"), "night": ("night",)}
TIME_SCENE = {
    "day": ("a daytime landscape", "a landscape in daylight", "a daytime scene"),
    "sunset": ("a sunset landscape", "a scene at dusk"),
    "night": ("a night landscape", "a night scene"),
}
CELESTIAL_NP = {
    ("sun", "day"): ("the sun", "a bright sun"),
    ("sun", "sunset"): ("the setting sun", "the sun"),
    ("moon", "night"): ("the moon", "a full moon"),
}
CELESTIAL_REL = ("with {c} in the sky", "under {c}", "beneath {c}")
OBJECT_JOIN = ("and", "beside", "near", "next to")
HOUSE_FORMS = (
    "{n} {wall} {house} with {roof_n} {roof} {roofs}",
    "{n} {house} with {wall} walls and {roof_n} {roof} {roofs}",
)
TEMPLATE_WORDS = ("above", "with", "and", "in", "the", "sky", "walls", "roof", "roofs", "one")


def _all_phrases():
    from .scene import ROOF_COLOURS, WALL_COLOURS

    yield from NUMBER_WORDS.values()
    yield from ONE_WORDS
    for syns in NOUNS.values():
        for pair in syns:
            yield from pair
    yield SMALL
    for d in (GROUND_PP, GROUND_NP, MOUNTAIN_NP, TIME_PP, TIME_WORD, TIME_SCENE, CELESTIAL_NP):
        for v in d.values():
            yield from v
    yield from MOUNTAIN_REL
    yield from CELESTIAL_REL
    yield from OBJECT_JOIN
    yield from HOUSE_FORMS
    yield from TEMPLATE_WORDS
    yield from WALL_COLOURS
    yield from ROOF_COLOURS


def _build_vocabulary() -> list[str]:
    words = set()
    for phrase in _all_phrases():
        for w in phrase.replace(",", " ").split():
            if not w.startswith("{"):
                words.add(w)
    return sorted(words)


WORLD_VOCABULARY: list[str] = _build_vocabulary()
WORLD_PUNCTUATION = [","]


def caption_words(caption: str) -> list[str]:
    """The words of a caption (punctuation removed)."""
    return caption.replace(",", " ").split()


# --------------------------------------------------------------------------- phrases


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _object_groups(scene, rng) -> list[str]:
    groups: dict[tuple, int] = {}
    for o in scene.objects:
        key = (o.kind, o.wall, o.roof)
        groups[key] = groups.get(key, 0) + 1
    keys = list(groups)
    rng.shuffle(keys)
    phrases = []
    for kind, wall, roof in keys:
        n = groups[(kind, wall, roof)]
        sing, plur = _pick(rng, NOUNS[kind])
        noun = sing if n == 1 else plur
        count = _pick(rng, ONE_WORDS) if n == 1 else NUMBER_WORDS[n]
        if kind == "house":
            form = _pick(rng, HOUSE_FORMS)
            phrases.append(
                form.format(
                    n=count,
                    wall=wall,
                    house=noun,
                    roof_n="a" if n == 1 else "",
                    roof=roof,
                    roofs="roof" if n == 1 else "roofs",
                ).replace("  ", " ")
            )
        else:
            adj = f"{SMALL} " if kind in ("boat", "rock") and rng.random() < 0.3 else ""
            phrases.append(f"{count} {adj}{noun}")
    return phrases


def _join_objects(phrases: list[str], rng) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return f"{phrases[0]} {_pick(rng, OBJECT_JOIN)} {phrases[1]}"
    if rng.random() < 0.5:
        return f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    return f"{phrases[0]} {_pick(rng, OBJECT_JOIN[1:])} {phrases[1]} and {phrases[2]}"


def _list_and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene) -> str:
    """A caption for ``scene``; deterministic given the scene graph."""
    rng = np.random.default_rng([scene.caption_seed, 0xCA9])
    tod, ground = scene.time_of_day, scene.ground
    objs = _object_groups(scene, rng)
    obj = _join_objects(objs, rng) if objs else ""
    mountains = _pick(rng, MOUNTAIN_NP[bool(scene.snow_caps)]) if scene.ridges else ""
    cel = ""
    if scene.celestial is not None:
        cel = _pick(rng, CELESTIAL_NP[(scene.celestial.kind, tod)])
    g_pp, g_np = _pick(rng, GROUND_PP[ground]), _pick(rng, GROUND_NP[ground])
    t_pp = _pick(rng, TIME_PP[tod])

    style = int(rng.integers(4))
    if style == 0:  # objects first: "a red house beside two pine trees on grass, below ..."
        parts = [f"{obj} {g_pp}" if obj else g_np]
        if mountains:
            parts.append(_pick(rng, MOUNTAIN_REL).format(m=mountains))
        parts.append(t_pp)
        if cel:
            parts.append(_pick(rng, CELESTIAL_REL).format(c=cel))
        text = " ".join(parts)
    elif style == 1 and mountains:  # mountains first: "snowy mountains above a lake at night"
        text = f"{mountains} above {g_np}"
        if obj:
            text += f" with {obj}"
        text += f" {t_pp}"
        if cel:
            text += f", {_pick(rng, CELESTIAL_REL).format(c=cel)}"
    elif style == 2:  # a list: "a small boat on a lake, mountains, daytime"
        items = [f"{obj} {g_pp}" if obj else g_np]
        if mountains:
            items.append(mountains)
        if cel:
            items.append(cel)
        order = rng.permutation(len(items))
        items = [items[i] for i in order] + [_pick(rng, TIME_WORD[tod])]
        text = ", ".join(items)
    else:  # scene intro: "a sunset landscape with a red house, mountains and a lake"
        items = objs + ([mountains] if mountains else []) + [g_np] + ([cel] if cel else [])
        text = f"{_pick(rng, TIME_SCENE[tod])} with {_list_and(items)}"
    return " ".join(text.split())
