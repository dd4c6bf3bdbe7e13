"""Classifier guidance for a job: the request's options → a guided denoiser, or the plain one."""

from __future__ import annotations

from ..algorithms.classifier_guidance import ClassifierGuided, classifier_log_prob
from ..classifier import parse_targets
from ..errors import InputError
from .base import JobContext, Options


def guided_denoiser(ctx: JobContext, o: Options, eta: float):
    """``ctx.denoiser`` pushed towards ``classifier_targets`` with ``classifier_scale``
    (Dhariwal & Nichol 2021): Algorithm 1's mean shift for the ancestral sampler (η = 1),
    Algorithm 2's ε̂ adjustment otherwise. Scale 0 is the plain denoiser itself."""
    scale = float(o.number("classifier_scale"))
    if scale == 0.0:
        return ctx.denoiser
    classifier = getattr(ctx.bundle, "classifier", None)
    if classifier is None:
        raise InputError(
            f"{ctx.bundle.name} has no classifier, so it cannot use classifier guidance; set "
            "the classifier scale to 0 (the demo model has one)."
        )
    target = parse_targets(o.text("classifier_targets"), classifier.attributes)
    mode = "mean" if eta >= 1.0 else "eps"
    return ClassifierGuided(ctx.denoiser, classifier_log_prob(classifier, target), scale, mode)
