"""Batch rendering of the demo world to an on-disk cache, and reading it back.

A cache folder holds, for scenes ``start_seed .. start_seed + n - 1`` (row i = seed start + i):

- ``images.npy``      uint8 (n, size, size, 3) RGB, readable as a memmap
- ``labels.npy``      uint8 (n, size, size) per-pixel label index into that row's label names
- ``attributes.npy``  int16 (n, len(ATTRIBUTE_SPEC)) attribute class indices
- ``meta.json``       size, n, start_seed, attribute spec, captions, label names per row

Rendering is split over worker processes that write straight into the memmaps.

CLI: ``python -m engine.training.dataset --n 2000 --out /tmp/world`` (prints scenes/s);
``--sheet PATH`` also saves a captioned contact sheet of the first scenes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..world.scene import ATTRIBUTE_SPEC, render_seed


def _render_chunk(args) -> tuple[int, list[str], list[list[str]], float]:
    out, start, lo, hi, size = args
    cpu0 = time.process_time()
    images = np.load(os.path.join(out, "images.npy"), mmap_mode="r+")
    labels = np.load(os.path.join(out, "labels.npy"), mmap_mode="r+")
    attrs = np.load(os.path.join(out, "attributes.npy"), mmap_mode="r+")
    captions, names = [], []
    for i in range(lo, hi):
        r = render_seed(start + i, size)
        images[i] = r.image
        labels[i] = r.labels
        attrs[i] = r.attribute_vector
        captions.append(r.caption)
        names.append(r.label_names)
    images.flush()
    labels.flush()
    attrs.flush()
    return lo, captions, names, time.process_time() - cpu0


def _pool_context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def build_cache(
    out: str | os.PathLike,
    n: int,
    start_seed: int = 0,
    size: int = 128,
    workers: int = 2,
    chunk: int = 200,
) -> tuple[Path, float]:
    """Render scenes ``start_seed .. start_seed + n - 1`` into the cache folder ``out``.

    Returns (folder, CPU seconds the renderers used) - CPU time is a load-independent measure.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = np.lib.format
    fmt.open_memmap(out / "images.npy", "w+", np.uint8, (n, size, size, 3)).flush()
    fmt.open_memmap(out / "labels.npy", "w+", np.uint8, (n, size, size)).flush()
    fmt.open_memmap(out / "attributes.npy", "w+", np.int16, (n, len(ATTRIBUTE_SPEC))).flush()
    jobs = [(str(out), start_seed, lo, min(n, lo + chunk), size) for lo in range(0, n, chunk)]
    captions: list[str] = [""] * n
    names: list[list[str]] = [[] for _ in range(n)]
    if workers <= 1:
        results = map(_render_chunk, jobs)
    else:
        pool = _pool_context().Pool(workers)
        results = pool.imap_unordered(_render_chunk, jobs)
    cpu = 0.0
    try:
        for lo, caps, nms, dt in results:
            captions[lo : lo + len(caps)] = caps
            names[lo : lo + len(nms)] = nms
            cpu += dt
    finally:
        if workers > 1:
            pool.close()
            pool.join()
    meta = {
        "size": size,
        "n": n,
        "start_seed": start_seed,
        "attribute_spec": [[name, list(classes)] for name, classes in ATTRIBUTE_SPEC],
        "captions": captions,
        "label_names": names,
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out, cpu


@dataclass
class WorldCache:
    """A rendered cache opened read-only (images and labels are memmaps)."""

    images: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray
    captions: list[str]
    label_names: list[list[str]]
    size: int
    start_seed: int

    @classmethod
    def open(cls, folder: str | os.PathLike) -> WorldCache:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            images=np.load(folder / "images.npy", mmap_mode="r"),
            labels=np.load(folder / "labels.npy", mmap_mode="r"),
            attributes=np.load(folder / "attributes.npy"),
            captions=meta["captions"],
            label_names=meta["label_names"],
            size=meta["size"],
            start_seed=meta["start_seed"],
        )

    def __len__(self) -> int:
        return len(self.captions)

    def masks(self, i: int) -> dict[str, np.ndarray]:
        """Boolean masks by name for row ``i`` (as ``RenderResult.masks``)."""
        lab = np.asarray(self.labels[i])
        names = self.label_names[i]
        return {n: lab == k for k, n in enumerate(names) if n and n != "celestial"}


def contact_sheet(seeds, path, size: int = 128, cols: int = 6, scale: int = 2) -> None:
    """Save a grid of renders with their seeds and captions under each tile."""
    from PIL import Image, ImageDraw

    seeds = list(seeds)
    rows = (len(seeds) + cols - 1) // cols
    cw, ch = size * scale, size * scale + 44
    sheet = Image.new("RGB", (cols * cw, rows * ch), "white")
    draw = ImageDraw.Draw(sheet)
    for k, seed in enumerate(seeds):
        r = render_seed(seed, size)
        x, y = (k % cols) * cw, (k // cols) * ch
        sheet.paste(Image.fromarray(r.image).resize((size * scale,) * 2, Image.NEAREST), (x, y))
        text = "\n".join(textwrap.wrap(f"{seed}: {r.caption}", 6 * scale * size // 36))
        draw.text((x + 2, y + size * scale + 1), text, fill="black")
    sheet.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Render demo-world scenes to an on-disk cache.")
    p.add_argument("--n", type=int, default=2000, help="number of scenes")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sheet", help="also save a contact sheet of the first 24 scenes here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    _, cpu = build_cache(a.out, a.n, a.start, a.size, a.workers)
    dt = time.perf_counter() - t0
    print(
        f"rendered {a.n} scenes of {a.size}px with {a.workers} workers in {dt:.2f} s wall: "
        f"{a.n / dt:.0f} scenes/s; {a.n / max(cpu, 1e-9):.0f} scenes per CPU-second "
        f"(rendering only, independent of machine load) -> {a.out}"
    )
    if a.sheet:
        contact_sheet(range(a.start, a.start + 24), a.sheet, a.size)
        print(f"contact sheet -> {a.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
