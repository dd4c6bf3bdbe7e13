"""Editing algorithms: small generator functions over a ``Denoiser``.

Each yields a ``Progress`` after every model call and returns its result (latents, masks,
…) as the generator's return value. No model loading, no device policy, no I/O here.
"""

from .common import Progress

__all__ = ["Progress"]
