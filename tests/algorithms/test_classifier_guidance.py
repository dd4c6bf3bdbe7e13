"""Classifier guidance (Dhariwal & Nichol 2021): the gradient, both algorithms' updates, s = 0."""

from __future__ import annotations

import math

import pytest
import torch

from engine.algorithms.classifier_guidance import ClassifierGuided, log_prob_gradient
from engine.algorithms.common import run_to_end
from engine.algorithms.generate import generate
from engine.algorithms.sampling import ddim_sample
from engine.classifier import LatentClassifier, load_classifier, parse_targets, save_classifier
from engine.errors import InputError
from engine.training.train_classifier import attributes_list

from .analytic import AnalyticDenoiser, schedule


def gaussian_classes(x: torch.Tensor, means: torch.Tensor, y: int) -> torch.Tensor:
    """log p(y | x) for equal-prior classes x | k ~ N(means[k], I), per sample (N)."""
    d = x.flatten(1)[:, None, :] - means.flatten(1)[None]  # N x K x D
    logits = -0.5 * (d**2).sum(-1)
    return torch.log_softmax(logits, 1)[:, y]


def test_gradient_matches_the_closed_form_of_a_linear_gaussian_classifier():
    # ∇_x log p(y | x) = μ_y − Σ_k p(k | x) μ_k for equal-prior unit-variance Gaussians
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 4, 2, 2, generator=g)
    x = torch.randn(5, 4, 2, 2, generator=g)
    grad = log_prob_gradient(lambda z, t: gaussian_classes(z, means, 1), x, 500)
    d = x.flatten(1)[:, None, :] - means.flatten(1)[None]
    post = torch.softmax(-0.5 * (d**2).sum(-1), 1)  # N x K
    expected = (means.flatten(1)[1][None] - post @ means.flatten(1)).view_as(x)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    assert not x.requires_grad  # the caller's tensor is left alone


def _linear(w: torch.Tensor):
    """log p(y | x) = <w, x> + const: its gradient is w everywhere."""
    return lambda x, t: (x * w).flatten(1).sum(1)


@pytest.fixture
def analytic():
    mu = torch.zeros(1, 4, 4, 4)
    return AnalyticDenoiser(schedule(), mu, 0.5)


def test_algorithm_2_shifts_eps_by_the_scaled_gradient(analytic):
    """ε̂' = ε̂ − s √(1−ᾱ_t) w, so one DDIM step (η = 0) moves by a known multiple of w."""
    w = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    s, t = 3.0, 601
    sched = analytic.schedule
    guided = ClassifierGuided(analytic, _linear(w), s, mode="eps")
    p, q = analytic.predict(x, t, torch.zeros(1, 1, 1)), guided.predict(x, t, torch.zeros(1, 1, 1))
    a = sched.alpha(t)
    torch.testing.assert_close(q.eps, p.eps - s * math.sqrt(1 - a) * w)
    torch.testing.assert_close(q.x0, sched.x0_from_eps(x, q.eps, t))


def test_both_algorithms_move_one_step_by_the_closed_form(analytic):
    w = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    s, t = 2.0, 601
    sched = analytic.schedule
    a, ap = sched.alpha(t), sched.alpha(-1)  # one step, from t to the clean end
    emb = torch.zeros(1, 1, 1)

    def step(den, eta):
        gen = torch.Generator().manual_seed(7)  # the same ancestral noise for both
        return run_to_end(ddim_sample(den, x.clone(), [t], emb, 1.0, gen, eta))

    # Algorithm 2 at η = 0: x_prev = √ᾱ' x̂₀ + √(1−ᾱ') ε̂ with ε̂ lowered by s √(1−ᾱ) w
    plain = step(analytic, 0.0)
    moved = step(ClassifierGuided(analytic, _linear(w), s, "eps"), 0.0)
    coef = math.sqrt(ap) * math.sqrt(1 - a) / math.sqrt(a) - math.sqrt(1 - ap)
    torch.testing.assert_close(moved - plain, s * math.sqrt(1 - a) * coef * w)
    # Algorithm 1 at η = 1: the mean moves by s Σ w, Σ = σ² of the ancestral step
    plain = step(analytic, 1.0)
    moved = step(ClassifierGuided(analytic, _linear(w), s, "mean"), 1.0)
    var = sched.ddim_sigma(t, -1, 1.0) ** 2
    torch.testing.assert_close(moved - plain, s * var * w)


def test_scale_zero_is_bit_identical_to_unguided_sampling(tiny_denoiser):
    clf = LatentClassifier(attributes_list(), latent_size=8)
    cond = tiny_denoiser.condition("a red house", "", 3.0)

    def sample(den, eta):
        gen = torch.Generator().manual_seed(5)
        return run_to_end(generate(den, cond, (1, 4, 8, 8), 4, 3.0, gen, eta))

    for mode, eta in (("eps", 0.0), ("mean", 1.0)):
        guided = ClassifierGuided(
            tiny_denoiser, lambda x, t: clf.log_prob(x, torch.tensor(t), {0: 2}), 0.0, mode
        )
        assert torch.equal(sample(guided, eta), sample(tiny_denoiser, eta))
        guided = ClassifierGuided(
            tiny_denoiser, lambda x, t: clf.log_prob(x, torch.tensor(t), {0: 2}), 4.0, mode
        )
        assert not torch.equal(sample(guided, eta), sample(tiny_denoiser, eta))


def test_the_wrapper_shares_the_denoisers_state(tiny_denoiser):
    guided = ClassifierGuided(tiny_denoiser, _linear(torch.ones(1)), 1.0)
    before = tiny_denoiser.chunks
    guided.chunks = 3  # what a job sets for long prompts reaches the real denoiser
    assert tiny_denoiser.chunks == 3
    tiny_denoiser.chunks = before
    assert guided.schedule is tiny_denoiser.schedule
    with pytest.raises(ValueError, match="mode"):
        ClassifierGuided(tiny_denoiser, _linear(torch.ones(1)), 1.0, mode="x0")


def test_classifier_round_trip_and_other_working_sizes(tmp_path):
    torch.manual_seed(0)
    clf = LatentClassifier(attributes_list(), latent_size=16).eval().requires_grad_(False)
    save_classifier(clf, tmp_path)
    back = load_classifier(tmp_path)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in clf.state_dict().items())
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        for a, b in zip(clf(x, t), back(x, t)):
            assert torch.equal(a, b)
    # a 256 px canvas has 32x32 latents: the attention pool's grid is resampled
    logits = back(torch.randn(1, 4, 32, 32), torch.tensor([500]))
    assert [z.shape[1] for z in logits] == [len(c) for _, c in attributes_list()]
    assert not any(p.requires_grad for p in back.parameters())


def test_targets_in_words():
    attrs = attributes_list()
    names = [n for n, _ in attrs]
    t = parse_targets("Night,  snow ground; 2 houses, red walls, no moon", attrs)
    assert t == {
        names.index("time_of_day"): 2,
        names.index("ground"): 2,
        names.index("n_house"): 2,
        names.index("house_wall"): 1,
        names.index("has_moon"): 0,
    }
    assert parse_targets("time_of_day=sunset", attrs) == {0: 1}
    with pytest.raises(InputError, match="does not know 'purple sky'"):
        parse_targets("purple sky", attrs)
    with pytest.raises(InputError, match="two values of time_of_day"):
        parse_targets("night, day", attrs)
    with pytest.raises(InputError, match="at least one"):
        parse_targets(" , ", attrs)


def test_per_sample_targets_equal_one_target_at_a_time():
    torch.manual_seed(0)
    clf = LatentClassifier(attributes_list(), latent_size=16).eval().requires_grad_(False)
    x, t = torch.randn(3, 4, 16, 16), torch.tensor([100, 500, 900])
    classes = torch.tensor([0, 2, 1])
    together = clf.log_prob(x, t, {0: classes, 1: 3})
    for i in range(3):
        alone = clf.log_prob(x[i : i + 1], t[i : i + 1], {0: int(classes[i]), 1: 3})
        torch.testing.assert_close(together[i : i + 1], alone)
    # the log-probabilities of one attribute's classes sum to one
    every = torch.stack([clf.log_prob(x, t, {0: c}) for c in range(3)]).exp().sum(0)
    torch.testing.assert_close(every, torch.ones(3))
