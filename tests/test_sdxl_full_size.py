"""Parity on a random full-size SDXL base saved by the test (issue 16's check), opt-in.

The model is ``python -m engine bench --model random:sdxl``'s: the full-size architecture
from the shipped configs (``engine/configs/sdxl``, 3.5 B parameters) with seeded random
weights. The test saves it as a diffusers folder and as one ``.safetensors`` file in the SGM
layout (``sdxl_parity.to_sgm``, the writer of ``test_sdxl_loading.py``), then

- loads the single file through ``load_model`` with no configs beside it (the family is
  recognised from the weights and the shipped configs are used, as for a user's file) and
  checks that it holds the same weights as the folder loaded the same way, by digest: two
  fp32 copies (2 x 14 GB) do not fit in the 23 GiB this was written for;
- on the folder's model, checks that our text-to-image and SDEdit match diffusers'
  ``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` on the same components,
  prompt, seed and steps at 256² (``sdxl_parity``; our posterior-mean latents handed to the
  img2img pipeline), in latents and in decoded pixels.

Both files are written in fp16, as released SDXL checkpoints are: the loaders copy a file's
tensors into fp32 before the file's own copy is dropped, so loading the single file peaks
at its size plus the fp32 model, 7 + 14 GB in fp16 and 14 + 14 GB in fp32 (more than the
machine has). Parity does not depend on it: both sides run on the same loaded fp32 modules,
whose values the fp16 rounding fixed before either side saw them.

``DIFFUSION_EDITOR_FULL_SIZE=1`` runs it (see ``SKIP_REASON`` for what it needs). The same
steps run in every test session on builtin:tiny-xl's configs, so the check keeps working.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from job_driver import gradient_image
from safetensors.torch import save_file
from sdxl_parity import (
    pipeline_pixels,
    sdedit_pair,
    text2img_pipeline,
    text_to_image_pair,
    to_sgm,
    weight_digests,
)

from engine import bench, loaders, sdxl
from engine.models import load_model

ENV_FULL_SIZE = "DIFFUSION_EDITOR_FULL_SIZE"
SKIP_REASON = (
    f"full-size SDXL with random weights (3.5 B parameters): set {ENV_FULL_SIZE}=1 to run it; "
    "it needs about 21 GiB of RAM (20.3 GiB peak measured), 14 GB free under the temp folder "
    "and about 6 minutes on 2 CPU cores (no GPU needed)"
)
PROMPT = "a red house beside two pine trees under a sunset sky"
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class Figures:
    """What one run saw: the largest differences and what it cost."""

    seconds: dict[str, float] = field(default_factory=dict)
    latent_diff: dict[str, float] = field(default_factory=dict)  # max |ours - theirs|
    latent_scale: dict[str, float] = field(default_factory=dict)  # max |theirs|
    pixel_diff: dict[str, int] = field(default_factory=dict)  # max, in 0-255 levels
    unclipped: dict[str, float] = field(default_factory=dict)  # share of pixels in 1-254

    def timed(self, name: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = time.perf_counter() - t0
        return out

    def report(self) -> str:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        lines = [f"peak RSS {peak:.2f} GiB, torch threads {torch.get_num_threads()}"]
        lines += [f"{k}: {v:.1f} s" for k, v in self.seconds.items()]
        for k in self.latent_diff:
            lines.append(
                f"{k}: max |latent diff| {self.latent_diff[k]:.3g} (max |latent| "
                f"{self.latent_scale[k]:.3g}), max pixel diff {self.pixel_diff[k]}/255 "
                f"({self.unclipped[k]:.0%} of the pipeline's pixel values off 0 and 255)"
            )
        return "\n".join(lines)


# ---- the steps ------------------------------------------------------------------------------


def save_random_sdxl(root) -> tuple:
    """``random:sdxl`` in fp16 as a diffusers folder and as an SGM single file."""
    bundle = bench.random_model(sdxl.BASE, "cpu", "fp32")
    for name in PARTS:  # halved one at a time: one fp32 copy of the model at most
        module = getattr(bundle, name).half()
        setattr(bundle, name, module.to(memory_format=torch.contiguous_format))
    folder, file = root / "random-sdxl", root / "random-sdxl.safetensors"
    text2img_pipeline(bundle).save_pretrained(folder)
    state = to_sgm(*(getattr(bundle, name) for name in PARTS))
    save_file({k: v.contiguous() for k, v in state.items()}, file)
    return folder, file


def loaded_digests(path) -> dict[str, dict[str, str]]:
    """Load ``path`` as a user would, fingerprint every weight, and let the model go."""
    bundle = load_model(path, device="cpu")
    assert bundle.family == sdxl.BASE
    return {name: weight_digests(getattr(bundle, name)) for name in PARTS}


def compare(figures: Figures, name: str, bundle, ours, theirs) -> None:
    figures.latent_diff[name] = float((ours - theirs).abs().max())
    figures.latent_scale[name] = float(theirs.abs().max())
    ours_px, theirs_px = bundle.decode(ours), pipeline_pixels(bundle, theirs)
    figures.pixel_diff[name] = int(np.abs(ours_px.astype(int) - theirs_px.astype(int)).max())
    figures.unclipped[name] = float(((theirs_px > 0) & (theirs_px < 255)).mean())
    # not a blank or saturated picture, where equal pixels would say nothing
    assert 0 < theirs_px.mean() < 255 and theirs_px.std() > 1, name


def check_random_sdxl(root, size: int, steps: int) -> Figures:
    """The whole check (module docstring) on ``random:sdxl`` as the shipped configs build it."""
    figures = Figures()
    folder, file = figures.timed("build and save (folder + single file)", save_random_sdxl, root)
    gc.collect()  # the saved model's memory back before a load
    from_file = figures.timed("load the single file + digests", loaded_digests, file)
    gc.collect()
    bundle = figures.timed("load the folder", load_model, folder, "cpu")
    shutil.rmtree(folder)  # 14 GB on disk, no longer needed (pytest keeps its temp folders)
    file.unlink()
    from_folder = {name: weight_digests(getattr(bundle, name)) for name in PARTS}
    assert from_file == from_folder
    assert all(from_folder[name] for name in PARTS)

    ours, theirs = figures.timed(
        "text-to-image, ours + pipeline",
        text_to_image_pair,
        *(bundle, PROMPT, "", steps, 5.0, (size, size), 3),
    )
    compare(figures, "text-to-image", bundle, ours, theirs)
    image = gradient_image(size, size, seed=1)
    ours, theirs, start = figures.timed(
        "SDEdit, ours + pipeline",
        sdedit_pair,
        *(bundle, image, PROMPT, 0.6, steps + 1, 5.0, 7),
    )
    compare(figures, "SDEdit", bundle, ours, theirs)
    assert (ours - start).abs().mean() > 1e-3  # it did edit
    return figures


def assert_parity(figures: Figures) -> None:
    for name, diff in figures.latent_diff.items():
        assert diff <= 1e-4 * max(1.0, figures.latent_scale[name]), (name, diff)
        assert figures.pixel_diff[name] <= 1, name  # rounding at a level's edge at most


# ---- the tests ------------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get(ENV_FULL_SIZE) != "1", reason=SKIP_REASON)
def test_random_full_size_sdxl_matches_the_pipelines_and_its_single_file(tmp_path):
    figures = check_random_sdxl(tmp_path, size=256, steps=4)
    print(f"\nfull-size random SDXL, 256², 4 + 3 steps:\n{figures.report()}")
    assert_parity(figures)


def test_the_full_size_check_runs_on_tiny_configs(tmp_path, monkeypatch):
    """The same steps on builtin:tiny-xl's architecture, standing in for the shipped
    configs (as in ``test_sdxl_bench.py``), so the opt-in check stays in working order."""
    configs = tmp_path / "configs"
    text2img_pipeline(load_model("builtin:tiny-xl", device="cpu")).save_pretrained(
        configs / sdxl.BASE
    )
    monkeypatch.setattr(loaders, "CONFIGS_DIR", configs)
    figures = check_random_sdxl(tmp_path, size=64, steps=4)
    assert_parity(figures)
    assert set(figures.pixel_diff) == {"text-to-image", "SDEdit"}
