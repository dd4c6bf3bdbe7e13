"""One description of every method (engine.methods): the engine, the CLI, the editor's forms
and the PNG metadata all read their defaults and bounds from it."""

import dataclasses
import json
import subprocess
import sys

import pytest

from engine import EditRequest, cli, methods
from engine.errors import InputError
from engine.jobs import JOB_RUNNERS
from engine.jobs.base import Options, validate


def cli_json(capsys) -> dict:
    assert cli.main(["methods", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_methods_json_lists_every_method_with_its_inputs_and_options(capsys):
    described = cli_json(capsys)
    assert set(described["methods"]) == set(JOB_RUNNERS) == set(methods.METHODS)
    assert set(described["common"]) == {"steps", "guidance", "strength", "seed"}
    repaint = described["methods"]["repaint"]
    assert repaint["inputs"]["mask"] == "required" and repaint["inputs"]["image"] is True
    assert repaint["options"]["jump_length"] == {
        "type": "int",
        "default": 5,
        "help": methods.METHODS["repaint"].options["jump_length"].help,
        "min": 1,
        "max": 1000,
    }
    assert "79 %" in repaint["options"]["sampler"]["calibrated"]
    assert described["methods"]["reedit"]["inputs"]["inversion"] == "needs"
    assert described["methods"]["invert"]["stochastic"] is False
    for m in methods.METHODS.values():  # every declaration has its runner
        assert m.runner is JOB_RUNNERS[m.name]


def test_python_dash_m_engine_methods_json_is_json():
    r = subprocess.run(
        [sys.executable, "-m", "engine", "methods", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["methods"]) == set(methods.METHODS)


def test_every_option_has_a_cli_flag_with_its_declared_default_in_help(capsys):
    for name, m in methods.METHODS.items():
        assert cli.main([name, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for key, o in m.options.items():
            assert "--" + key.replace("_", "-") in text, (name, key)
            if o.default not in (None, ""):
                assert f"Default: {o.default}." in text, (name, key)


def _patch_option(monkeypatch, method, key, **changes):
    options = methods.METHODS[method].options
    monkeypatch.setitem(options, key, dataclasses.replace(options[key], **changes))


def _cli_args(argv):
    parser = cli.make_parser()
    a = parser.parse_args(argv)
    return a


def test_a_changed_default_is_followed_by_the_cli_and_the_engine(monkeypatch):
    _patch_option(monkeypatch, "repaint", "jump_length", default=7)
    monkeypatch.setitem(
        methods.COMMON, "steps", dataclasses.replace(methods.COMMON["steps"], default=13)
    )
    # the engine: requests and options
    assert EditRequest("generate").steps == 13
    assert Options("repaint", {}).number("jump_length") == 7
    # the CLI: the parser's default and the sub-command's --help
    a = _cli_args(["repaint", "-i", "x.png"])
    assert a.steps is None and a.option_jump_length is None  # unset: the engine's default
    assert cli.build_request("generate", _cli_args(["generate"])).steps == 13
    help_text = " ".join(
        cli.make_parser()._subparsers._group_actions[0].choices["repaint"].format_help().split()
    )
    jump_help = " ".join(methods.METHODS["repaint"].options["jump_length"].help.split())
    assert f"{jump_help} From 1 to 1000. Default: 7." in help_text
    assert "Default: 13." in help_text


def test_changed_bounds_are_followed_by_the_engine(monkeypatch):
    _patch_option(monkeypatch, "sdedit", "feather", hi=10.0)
    monkeypatch.setitem(
        methods.COMMON, "guidance", dataclasses.replace(methods.COMMON["guidance"], hi=9.0)
    )
    with pytest.raises(InputError, match="feather.* between 0 and 10, got 11"):
        validate(EditRequest("sdedit", options={"feather": 11.0}))
    with pytest.raises(InputError, match="Guidance must be between 0 and 9, got 9.5"):
        validate(EditRequest("generate", guidance=9.5))


def test_option_flags_set_the_request_options(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save("in.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save("m.png")
    a = _cli_args(
        ["repaint", "-i", "in.png", "--mask", "m.png", "--jump-length", "4", "--sampler", "ddim"]
    )
    req = cli.build_request("repaint", a)
    assert dict(req.options) == {"jump_length": 4, "sampler": "ddim"}
    a = _cli_args(["diffedit_mask", "-i", "in.png", "--reference-prompt", "123"])
    assert cli.build_request("diffedit_mask", a).options["reference_prompt"] == "123"  # text


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--jump-length", "abc"], "The option 'jump_length' of repaint must be a whole number"),
        (["--jump-length", "0"], "must be between 1 and 1000, got 0"),
        (["--sampler", "euler"], "must be one of ['ddim', 'ddpm'], got 'euler'"),
        (["--jump-length", "4", "-O", "jump_length=5"], "given twice"),
    ],
)
def test_a_bad_option_flag_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, argv, words):
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save("in.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save("m.png")
    code = cli.main(["repaint", "-i", "in.png", "--mask", "m.png", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not list(tmp_path.glob("repaint*.png"))


def test_png_metadata_is_read_back_through_the_declarations(tmp_path):
    import numpy as np

    from engine.metadata import read_png_parameters, request_fields, save_png

    req = EditRequest("repaint", prompt="a, b", steps=9, options={"jump_length": 4})
    path = save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "r.png", req.parameters())
    fields, problems = request_fields(read_png_parameters(path))
    assert problems == []
    assert fields == {
        "prompt": "a, b",
        "method": "repaint",
        "steps": 9,
        "guidance": 7.5,
        "strength": 0.6,
        "seed": 0,
        "options": {"jump_length": 4},
    }
    # a value outside its declaration is left out, with a sentence
    text = {
        "prompt": "x",
        "Method": "repaint",
        "Steps": "5000",
        "Jump length": "x",
        "Sampler": "euler",
    }
    fields, problems = request_fields(text)
    assert fields == {"prompt": "x", "method": "repaint"}
    assert problems == [
        "Steps is '5000'; it must be a whole number from 1 to 1000.",
        "Jump length is 'x'; it must be a whole number from 1 to 1000.",
        "Sampler is 'euler'; it must be one of ddim, ddpm.",
    ]


def test_metadata_reading_follows_a_changed_bound(monkeypatch):
    from engine.metadata import request_fields

    _patch_option(monkeypatch, "repaint", "jump_length", hi=3)
    fields, problems = request_fields({"prompt": "", "Method": "repaint", "Jump length": "4"})
    assert problems == ["Jump length is '4'; it must be a whole number from 1 to 3."]
