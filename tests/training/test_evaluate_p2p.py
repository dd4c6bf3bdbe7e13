"""The Prompt-to-Prompt evaluation's measures can fail: fed the source image back they say
"unchanged", fed the world's true edit they say "changed, background kept"."""

from types import SimpleNamespace

from engine.evaluation import evaluate_edits as ev
from engine.evaluation import evaluate_p2p as p2p


class Replay:
    """A stand-in for the job runner: 'none' returns the source, 'p2p' the true edit; the
    default P2P re-edit of a roof says it changed the whole picture."""

    log = staticmethod(lambda m: None)
    invert = ev.Runner.invert  # the real one, through this __call__
    # a VAE that gives pictures back as they are (the ceiling after the VAE = the ceiling)
    bundle = SimpleNamespace(encode=lambda x: x, decode=lambda x: x)

    def __init__(self, cases):
        self.by_caption = {c.edit_prompt: c for c in cases}

    def __call__(self, method, **fields):
        if method == "invert":
            return SimpleNamespace(extras={"inversion": object()}), 1.0
        c = self.by_caption[fields["prompt"]]
        control = fields["options"]["control"]
        image = c.after.image if control == "p2p" else c.before.image
        default = control == "p2p" and set(fields["options"]) == {"inversion", "control"}
        whole = default and c.attribute == "house_roof"
        params = {"blend_region": "whole picture"} if whole else {}
        res = SimpleNamespace(image=image, extras={}, parameters=params)
        return res, 2.0 if control == "p2p" else 1.0


def test_the_table_tells_the_source_from_the_true_edit():
    from engine.training.probe import load_probe

    cases = {
        "wall": ev.find_cases(ev.wall_colour_case, 3, 700_000),
        "roof": ev.find_cases(ev.roof_colour_case, 3, 710_000),
        "kind": ev.find_cases(ev.object_kind_case, 3, 720_000),
    }
    run = Replay([c for cs in cases.values() for c in cs])
    table, rows = p2p.p2p_metrics(run, load_probe(), cases, inversions=("direct",))
    for kind in cases:
        plain, edit = table[f"{kind}/direct/none"], table[f"{kind}/direct/p2p"]
        assert plain["attribute_changed"]["k"] == 0  # the source is not the edit
        # the true edit reads as done as often as its control says (object kinds by the
        # localised new-object rule, colours by the house's pixels: every time)
        assert edit["attribute_changed"]["k"] == table["reads_true_edit"][kind]["k"] > 0
        assert table["reads_true_edit_vae"][kind] == table["reads_true_edit"][kind]
        if kind != "kind":
            assert edit["attribute_changed"]["k"] == 3
        assert edit["background_psnr_db"]["worst"] > 40  # outside the region: untouched
        assert edit["psnr_vs_true_edit_db"]["worst"] == float("inf")
        assert plain["psnr_vs_true_edit_db"]["mean"] < 40
        assert edit["time_vs_plain"]["mean"] == 2.0
        assert edit["whole_picture"]["k"] == (3 if kind == "roof" else 0)
        assert (
            "whole_picture" not in plain
            and "whole_picture" not in table[f"{kind}/direct/p2p, no blend"]
        )
    assert len(rows) == 3 * 3 * len(p2p.VARIANTS)
    text = p2p.format_table({"seed_start": 0, "n": 3, "table": table})
    assert "| wall | direct | p2p |" in text and "control: the true edit reads" in text
