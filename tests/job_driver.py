"""Shared by the job tests: a test picture, a box mask, and a job driven without the engine."""

import numpy as np
import torch

from engine.algorithms.common import drive
from engine.jobs import JOB_RUNNERS, JobContext


def gradient_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A colour ramp with mild noise: structure to keep, and no flat areas."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 128.0)], -1)
    return (base + rng.normal(0, 10, (h, w, 3))).clip(0, 255).astype(np.uint8)


def box_mask(h: int, w: int) -> np.ndarray:
    """255 in the middle half of the rows and third of the columns, 0 elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 255
    return m


def run_job(bundle, denoiser, req):
    """Drive a job as the engine does, without its thread: (result, the steps it yielded)."""
    steps = []
    with torch.no_grad():
        result = drive(JOB_RUNNERS[req.method](JobContext(bundle, denoiser), req), steps.append)
    return result, steps
