"""Classifier guidance from the command line on the shipped demo model and its classifier:
generate, read the PNG's parameters back, SDEdit the file with guidance."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine import cli
from engine.metadata import read_png_parameters, request_fields


def _run(capsys, monkeypatch, cwd, *argv):
    monkeypatch.chdir(cwd)
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_guided_generate_records_its_targets_and_sdedit_reads_the_file(
    tmp_path, capsys, monkeypatch
):
    common = ("--model", "builtin:demo", "-p", "", "--steps", "10", "--seed", "3")
    code, err = _run(capsys, monkeypatch, tmp_path, "generate", *common, "-o", "plain.png")
    assert code == 0, err
    code, err = _run(
        capsys, monkeypatch, tmp_path, "generate", *common,
        "--classifier-targets", "night, snow ground", "--classifier-scale", "6", "-o", "night.png",
    )  # fmt: skip
    assert code == 0, err
    meta = read_png_parameters(tmp_path / "night.png")
    assert meta["Classifier targets"] == "night, snow ground"
    fields, problems = request_fields(meta)
    assert not problems
    assert fields["options"]["classifier_targets"] == "night, snow ground"
    assert fields["options"]["classifier_scale"] == 6.0
    plain = np.asarray(Image.open(tmp_path / "plain.png"), np.float64)
    night = np.asarray(Image.open(tmp_path / "night.png"), np.float64)
    assert np.abs(plain - night).mean() > 2.0  # the same noise, steered elsewhere

    code, err = _run(
        capsys, monkeypatch, tmp_path, "sdedit", "--model", "builtin:demo", "-i", "plain.png",
        "-p", "", "--strength", "0.5", "--steps", "10", "--sampler", "ddpm",
        "--classifier-targets", "sun", "--classifier-scale", "4", "-o", "edit.png",
    )  # fmt: skip
    assert code == 0, err
    assert read_png_parameters(tmp_path / "edit.png")["Classifier targets"] == "sun"


def test_unknown_targets_are_one_line(tmp_path, capsys, monkeypatch):
    code, err = _run(
        capsys, monkeypatch, tmp_path, "generate", "--model", "builtin:demo", "-p", "",
        "--steps", "2", "--classifier-targets", "purple sky", "--classifier-scale", "2",
    )  # fmt: skip
    assert code == 2 and "does not know 'purple sky'" in err
    assert "Traceback" not in err
