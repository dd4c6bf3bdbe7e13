"""The Edit prompt evaluation's measures can fail: a variant that hands the generated picture
back reads "unchanged", one that hands the world's true edit reads "changed, the rest kept"."""

from types import SimpleNamespace

import numpy as np

from engine.evaluation import evaluate_edit_prompt as ep
from engine.evaluation import evaluate_edits as ev


class Stand:
    """A stand-in for the job runner: 'generate' gives the scene's render; the default edit
    the true edit (a time-of-day one says it changed the whole picture), the attention blend
    the source back, no blend the true edit."""

    log = staticmethod(lambda m: None)

    def __init__(self, cases):
        self.by_caption = {c.before.caption: c for c in cases}

    def __call__(self, method, **fields):
        if method == "generate":
            c = self.by_caption[fields["prompt"]]
            return SimpleNamespace(image=c.before.image, parameters={}, extras={}), 1.0
        c = self.by_caption[fields["options"]["source_prompt"]]
        assert np.array_equal(fields["image"], c.before.image)  # the picture is given
        back = fields["options"].get("blend_mask") == "attention"
        whole = c.attribute == "time_of_day" and len(fields["options"]) == 1
        params = {"blend_region": "whole picture"} if whole else {}
        image = c.before.image if back else c.after.image
        return SimpleNamespace(image=image, parameters=params, extras={}), 2.0


def test_the_table_tells_the_source_from_the_true_edit():
    from engine.training.probe import load_probe

    cases = {
        "wall": ev.find_cases(ev.wall_colour_case, 3, 700_000),
        "time": ev.find_cases(ev.time_of_day_case, 3, 720_000, 2),
    }
    probe = load_probe()
    table = ep.edit_prompt_metrics(Stand([c for cs in cases.values() for c in cs]), probe, cases)
    for kind, kind_cases in cases.items():
        truth = probe.predict(np.stack([c.after.image for c in kind_cases]))
        k = ev.ATTRIBUTE_NAMES.index(kind_cases[0].attribute)
        reads = sum(p[k] == c.target for p, c in zip(truth, kind_cases))
        default, back = table[f"{kind}/diffedit region (default)"], table[f"{kind}/attention blend"]
        assert default["valid"]["k"] == 3  # the probe reads the old value on every render
        assert back["changed"]["k"] == 0 and back["psnr_vs_source_db"]["worst"] == float("inf")
        assert default["changed"]["k"] == reads > 0
        assert default["psnr_vs_source_db"]["mean"] < 60 and default["seconds"]["mean"] == 2.0
        assert default["whole_picture"]["k"] == (3 if kind == "time" else 0)
        assert "whole_picture" not in back
    text = ep.format_table({"seed_start": 700_000, "n": 3, "table": table})
    assert "| wall | attention blend | 3/3 | 0/3" in text and "| 3/3 |" in text


def test_a_range_the_model_was_trained_on_is_refused(capsys):
    assert ep.main(["--seeds", "0", "--n", "1"]) == 2
    assert "overlap the training seeds" in capsys.readouterr().err
