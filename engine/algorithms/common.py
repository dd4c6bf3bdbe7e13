"""What algorithms yield, and small helpers they share."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

R = TypeVar("R")


@dataclass
class Progress:
    """One model call done: step ``i`` of ``n`` at timestep ``t``.

    ``x0`` is the current clean-image prediction in latent space (previewed by the engine);
    ``image`` is an already-rendered preview (e.g. a DiffEdit mask as it accumulates);
    ``mask`` a mask the job is forming (Prompt-to-Prompt's local blend), for the mask layer."""

    i: int
    n: int
    t: int
    x0: torch.Tensor | None = None
    image: np.ndarray | None = None
    label: str = ""
    mask: torch.Tensor | None = None  # a mask as it forms (latent size, 1 = edit), shown


Algorithm = Generator[Progress, None, R]


def drive(
    gen: Generator[Progress, None, R],
    on_progress: Callable[[Progress], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> R:
    """The one driver of an algorithm or a job (engine thread, CLI, evaluation, tests): calls
    ``check_cancel`` before every step (it cancels by raising), ``on_progress`` after every
    yield, and returns the generator's value. The generator is closed however this ends, so
    its ``finally`` clauses (and gradient modes) unwind before the caller goes on."""
    try:
        while True:
            if check_cancel is not None:
                check_cancel()
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(p)
    finally:
        gen.close()


def run_to_end(gen: Generator[Progress, None, R]) -> R:
    """Drive an algorithm without watching its progress; return its result."""
    return drive(gen)


Generators = torch.Generator | Sequence[torch.Generator]


def randn(shape, generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the CPU generator, so a seed means the same noise on any device.

    ``generator`` may be one per sample of the batch: each sample's noise is then what its
    generator alone draws for a batch of one, so a picture made in a batch is the picture
    its seed makes alone."""
    if isinstance(generator, torch.Generator):
        z = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        one = (1, *shape[1:])
        z = torch.cat([torch.randn(one, generator=g, dtype=torch.float32) for g in generator])
    return z.to(device, dtype)
