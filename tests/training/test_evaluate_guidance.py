"""The guidance trade-off evaluation: precision/recall on Gaussians with known answers, and
the evaluation end to end on the tiny model with a random classifier."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation.evaluate_guidance import (
    evaluate_guidance,
    format_table,
    knn_precision_recall,
    save_plot,
)


def gaussian(n, dim=8, shift=0.0, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim))
    x[:, 0] += shift
    return x


def test_identical_sets_have_full_precision_and_recall():
    x = gaussian(300)
    p, r = knn_precision_recall(x, x.copy())
    assert p.all() and r.all()


def test_disjoint_sets_have_none():
    p, r = knn_precision_recall(gaussian(300), gaussian(300, shift=30.0, seed=1))
    assert not p.any() and not r.any()


def test_dropping_a_mode_halves_recall_and_keeps_precision():
    # real: two far-apart modes, equally likely; fake: only one of them
    real = np.concatenate([gaussian(300, shift=-20.0, seed=2), gaussian(300, shift=20.0, seed=3)])
    fake = gaussian(600, shift=20.0, seed=4)
    p, r = knn_precision_recall(real, fake)
    same_p, same_r = knn_precision_recall(gaussian(600, seed=5), gaussian(600, seed=6))
    assert r.mean() <= 0.5  # the dropped mode's real points are never covered
    assert r.mean() >= 0.5 * same_r.mean() - 0.05
    assert p.mean() >= same_p.mean() - 0.05


def test_shrinking_the_samples_trades_recall_for_precision():
    # "truncation": samples pulled towards the mean are all typical (precision up) and cover
    # less of the real spread (recall down), the trade-off guidance makes
    real, fake = gaussian(500, seed=7), gaussian(500, seed=8)
    p1, r1 = knn_precision_recall(real, fake)
    p2, r2 = knn_precision_recall(real, 0.5 * fake)
    assert p2.mean() > p1.mean() and r2.mean() < r1.mean()


@pytest.mark.slow
def test_evaluation_end_to_end_on_tiny(tmp_path):
    import torch

    from engine.classifier import LatentClassifier
    from engine.models import load_model
    from engine.training.probe import load_probe
    from engine.training.train_classifier import attributes_list

    bundle = load_model("builtin:tiny", device="cpu")
    torch.manual_seed(0)
    bundle.classifier = LatentClassifier(attributes_list(), latent_size=16).eval()
    bundle.classifier.requires_grad_(False)
    only = ["unconditional + CG 0", "unconditional + CG 4", "unconditional + CG 4, ancestral"]
    r = evaluate_guidance(bundle, load_probe(), 500_000, 6, batch=4, log=lambda m: None, only=only)
    assert list(r["rows"]) == ["real", *only]
    for name in only:
        row = r["rows"][name]
        assert row["accuracy"]["n"] == 6 and 0 <= row["precision"]["rate"] <= 1
        assert row["seconds_per_sample"] > 0
    assert r["rows"]["real"]["frechet"]["value"] >= 0
    assert "unconditional + CG 4, ancestral" in format_table(r)


def test_plot_draws_every_family(tmp_path):
    from PIL import Image

    from engine.evaluation.evaluate_guidance import CFG_SCALES, CG_SCALES, rows

    names = [r["name"] for r in rows()] + [f"CFG {w:g}" for w in CFG_SCALES]
    rates = {"accuracy": 0.9, "precision": 0.6, "recall": 0.3}  # three separate lines
    r = {
        "n": 3,
        "steps": 25,
        "rows": {k: {m: {"rate": v, "ci95": [v, v]} for m, v in rates.items()} for k in names},
    }
    assert len(CG_SCALES) == 7
    save_plot(r, tmp_path / "plot.png")
    img = np.asarray(Image.open(tmp_path / "plot.png").convert("RGB"))
    for colour in ((200, 40, 40), (40, 110, 200), (40, 160, 70)):
        assert (img == colour).all(-1).sum() > 100  # each metric's line is drawn
