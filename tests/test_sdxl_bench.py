"""``python -m engine bench`` on SDXL: ours vs StableDiffusionXLImg2ImgPipeline. The CPU runs
only check that the path works (tiny models); figures are for a GPU."""

from __future__ import annotations

import re

import pytest

from engine import cli, loaders, sdxl


def _bench(capsys, *argv) -> str:
    code = cli.main(["bench", *argv, "--steps", "4", "--repeats", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _figures(out: str) -> dict[str, float]:
    return {
        name: float(m[1])
        for name in ("ours", "pipeline")
        if (m := re.search(rf"^{name}\s+median ([0-9.]+) s", out, re.M))
    }


def test_bench_times_tiny_xl_against_the_sdxl_img2img_pipeline(capsys):
    out = _bench(capsys, "--model", "builtin:tiny-xl")
    assert "model builtin:tiny-xl on cpu" in out and "64x64" in out
    figures = _figures(out)
    assert figures.keys() == {"ours", "pipeline"} and all(v > 0 for v in figures.values())
    assert re.search(r"wall-time ratio ours/pipeline: [0-9.]+", out)


@pytest.mark.parametrize("family", [sdxl.BASE, sdxl.REFINER])
def test_random_sdxl_path_builds_and_runs(capsys, monkeypatch, tmp_path, family):
    """``--model random:sdxl`` (and the refiner) build the full-size architecture from the
    shipped configs; here those configs are swapped for tiny ones of the same layout, since
    2.6 B random weights are a GPU's job."""
    from test_sdxl_loading import _pipeline, tiny_refiner

    parts = tiny_refiner() if family == sdxl.REFINER else sdxl.tiny_xl_components()
    _pipeline(parts, refiner=family == sdxl.REFINER).save_pretrained(tmp_path / family)
    for name in ("tokenizer", "tokenizer_2"):  # ship configs only, as engine/configs does
        for f in (tmp_path / family / name).glob("*"):
            if f.name != "tokenizer_config.json":
                f.unlink()
    monkeypatch.setattr(loaders, "CONFIGS_DIR", tmp_path)
    out = _bench(capsys, "--model", f"random:{family}")
    assert f"model random:{family} on cpu" in out
    assert _figures(out).keys() == {"ours", "pipeline"}


def test_memory_mode_reports_each_method(capsys):
    out = _bench(capsys, "--memory", "--model", "builtin:tiny-xl")
    assert "64x64, 4 steps" in out
    jobs = ["generate", "null-text inversion", "sdedit", "repaint", "diffedit mask", "diffedit"]
    jobs += ["ddim inversion", "direct inversion", "re-edit, no control"]
    jobs += [r"re-edit, attention control \(p2p\)"]
    for job in jobs:
        m = re.search(rf"^{job}: [0-9.]+ s, peak memory ([0-9.]+) GiB", out, re.M)
        assert m and float(m[1]) > 0, (job, out)
