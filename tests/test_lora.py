"""LoRA files on builtin:tiny: both key layouts load, fuse exactly as W + s·(α/r)·B·A
predicts, change the output, and removal restores every weight bit for bit; bad files give
one sentence and leave the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine import lora as lora_mod
from engine.lora import LoraError, add_lora, lora_list, remove_lora, set_lora_weight

RANK = 2
# (module path in the UNet / text encoder) → the kohya name is the path with "_" for "."
UNET_LAYERS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
)
# real files carry every attention projection (diffusers tells the converted kohya layout by
# its out-projection keys)
TEXT_LAYERS = (
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.self_attn.out_proj",
)


def _local(root, path: str) -> str:
    """A layer's path in this model: transformers 5's CLIPTextModel has no ``text_model``
    wrapper, while LoRA files (both layouts) name it."""
    return path if hasattr(root, "text_model") else path.removeprefix("text_model.")


def _module(root, path):
    path = _local(root, path)
    m = root
    for part in path.split("."):
        m = getattr(m, part)
    return m


def make_lora(bundle, seed: int, alpha: float | None = None, parts=None):
    """Random low-rank factors for a few layers: {(part, path): (down A, up B, α/r)}."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for part, layers in parts or (("unet", UNET_LAYERS), ("text_encoder", TEXT_LAYERS)):
        model = getattr(bundle, part)
        for path in layers:
            w = _module(model, path).weight
            down = 0.3 * torch.randn(RANK, w.shape[1], generator=g)
            up = 0.3 * torch.randn(w.shape[0], RANK, generator=g)
            out[(part, path)] = (down, up, (alpha if alpha is not None else RANK) / RANK)
    return out


def write_diffusers(factors, path):
    """The diffusers/PEFT layout (what ``save_lora_weights`` writes): α = r."""
    tensors = {}
    for (part, layer), (down, up, _) in factors.items():
        tensors[f"{part}.{layer}.lora_A.weight"] = down.contiguous()
        tensors[f"{part}.{layer}.lora_B.weight"] = up.contiguous()
    save_file(tensors, str(path))
    return path


KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
KOHYA_XL = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def write_kohya(factors, path, alpha: float, prefixes=KOHYA):
    """kohya-ss's layout: lora_unet_… / lora_te_… with lora_down, lora_up and alpha."""
    tensors = {}
    for (part, layer), (down, up, _) in factors.items():
        prefix = prefixes[part]
        key = prefix + layer.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


def snapshot(bundle):
    return {
        part: {k: v.detach().clone() for k, v in getattr(bundle, part).state_dict().items()}
        for part in ("unet", "text_encoder", "text_encoder_2")
        if getattr(bundle, part, None) is not None
    }


def assert_exactly(bundle, snap):
    for part, state in snap.items():
        now = getattr(bundle, part).state_dict()
        assert set(now) == set(state), f"{part} changed its parameter names"
        for k, v in state.items():
            assert torch.equal(now[k], v), f"{part}.{k} is not bit-exact"


def assert_fused(bundle, snap, factors, weight):
    for (part, layer), (down, up, scale) in factors.items():
        key = f"{_local(getattr(bundle, part), layer)}.weight"
        expected = snap[part][key] + weight * scale * (up @ down)
        got = _module(getattr(bundle, part), layer).weight
        assert torch.allclose(got, expected, atol=1e-5), (part, layer)
    # and nothing else moved
    touched = {(p, f"{_local(getattr(bundle, p), layer)}.weight") for p, layer in factors}
    for part, state in snap.items():
        now = getattr(bundle, part).state_dict()
        for k, v in state.items():
            if (part, k) not in touched:
                assert torch.equal(now[k], v), f"{part}.{k} changed"


@pytest.fixture()
def model():
    from engine.models import load_model

    bundle = load_model("builtin:tiny", device="cpu")
    yield bundle


def output(bundle, prompt="a red house"):
    from engine.denoiser import Denoiser

    den = Denoiser(bundle)  # fresh: the text encoder may have changed
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return den.predict(x, 500, den.condition(prompt)).eps


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_lora_fuses_as_predicted_and_removal_restores_bit_exactly(model, tmp_path, layout):
    snap, before = snapshot(model), output(model)
    alpha = 1.0 if layout == "kohya" else None
    factors = make_lora(model, seed=1, alpha=alpha)
    if layout == "kohya":
        path = write_kohya(factors, tmp_path / "style_k.safetensors", alpha)
    else:
        path = write_diffusers(factors, tmp_path / "style_d.safetensors")
    lora = add_lora(model, path, 0.8)
    assert lora.name == path.stem and len(lora.hash) == 12
    assert lora_list(model) == ((path.stem, 0.8),)
    assert_fused(model, snap, factors, 0.8)
    assert not torch.allclose(output(model), before)
    # no PEFT layers are left behind: the plain modules run at full speed
    assert not lora_mod._has_adapters(model.unet) and not lora_mod._has_adapters(model.text_encoder)
    set_lora_weight(model, path.stem, -0.5)
    assert_fused(model, snap, factors, -0.5)
    remove_lora(model, path.stem)
    assert lora_list(model) == ()
    assert_exactly(model, snap)
    assert torch.equal(output(model), before)


def test_two_loras_add_up_and_removing_one_leaves_the_other(model, tmp_path):
    snap = snapshot(model)
    fa, fb = make_lora(model, seed=2), make_lora(model, seed=3, alpha=4.0)
    a = add_lora(model, write_diffusers(fa, tmp_path / "a.safetensors"), 1.0)
    b = add_lora(model, write_kohya(fb, tmp_path / "b.safetensors", 4.0), 0.5)
    for (part, layer), (down, up, scale) in fa.items():
        db, ub, sb = fb[(part, layer)]
        key = f"{_local(getattr(model, part), layer)}.weight"
        want = snap[part][key] + scale * up @ down + 0.5 * sb * ub @ db
        assert torch.allclose(_module(getattr(model, part), layer).weight, want, atol=1e-5)
    remove_lora(model, a.name)
    assert lora_list(model) == ((b.name, 0.5),)
    assert_fused(model, snap, fb, 0.5)
    remove_lora(model, b.name)
    assert_exactly(model, snap)


def _error_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_files_give_one_sentence_and_leave_the_model_as_it_was(model, tmp_path):
    good = add_lora(model, write_diffusers(make_lora(model, 4), tmp_path / "good.safetensors"))
    snap = snapshot(model)
    # truncated
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tmp_path / "good.safetensors").read_bytes()[:100])
    with pytest.raises(LoraError) as e:
        add_lora(model, broken)
    assert "broken.safetensors" in _error_line(e)
    # a file that is not a LoRA
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LoraError) as e:
        add_lora(model, tmp_path / "plain.safetensors")
    assert "no LoRA weights" in _error_line(e)
    # a LoRA for another architecture: its shapes do not fit this model's layers
    wrong = {}
    for part, layers in (("unet", UNET_LAYERS), ("text_encoder", TEXT_LAYERS)):
        for layer in layers:
            wrong[(part, layer)] = (torch.randn(RANK, 77), torch.randn(99, RANK), 1.0)
    with pytest.raises(LoraError) as e:
        add_lora(model, write_diffusers(wrong, tmp_path / "sdxl_style.safetensors"))
    assert "does not fit" in _error_line(e)
    with pytest.raises(LoraError):
        add_lora(model, tmp_path / "missing.safetensors")
    with pytest.raises(LoraError):
        set_lora_weight(model, good.name, float("nan"))
    assert lora_list(model) == ((good.name, 1.0),)
    assert_exactly(model, snap)
    assert not lora_mod._has_adapters(model.unet)


def test_lora_hash_is_a1111s_hash_of_the_tensor_data(tmp_path):
    import hashlib
    import struct

    path = write_diffusers(
        {("unet", "x"): (torch.ones(2, 3), torch.ones(3, 2), 1.0)}, tmp_path / "h.safetensors"
    )
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert lora_mod.lora_hash(path) == hashlib.sha256(data[8 + n :]).hexdigest()[:12]
    assert np.all([c in "0123456789abcdef" for c in lora_mod.lora_hash(path)])


def test_png_text_records_loras_as_a1111_does_and_reads_them_back():
    from engine.metadata import format_parameters, lora_fields, parse_parameters, request_fields

    loras = [
        {"name": "watercolour", "weight": 0.8, "hash": "0123456789ab"},
        {"name": "lcm-lora-sdv1-5", "weight": 1.0, "hash": "ba9876543210"},
    ]
    params = {"method": "generate", "prompt": "a house", "steps": 4, "seed": 1, "loras": loras}
    text = format_parameters(params)
    first = text.split("\n")[0]
    assert first == "a house <lora:watercolour:0.8> <lora:lcm-lora-sdv1-5:1>"
    assert 'Lora hashes: "watercolour: 0123456789ab, lcm-lora-sdv1-5: ba9876543210"' in text
    parsed = parse_parameters(text)
    assert lora_fields(parsed) == loras
    fields, problems = request_fields(parsed)
    assert problems == [] and fields["prompt"] == "a house"  # the tags are not prompt text
    # A1111's own form: a tag without a weight, and no hashes field
    assert lora_fields({"prompt": "<lora:ink> a boat"}) == [
        {"name": "ink", "weight": 1.0, "hash": ""}
    ]
    # without LoRAs nothing changes
    assert "Lora" not in format_parameters({**params, "loras": []})


def test_engine_adds_and_removes_loras_between_jobs(engine, tiny, tmp_path):
    from engine.metadata import format_parameters
    from engine.types import EditRequest, Failed, Finished, LorasChanged

    req = EditRequest("generate", "a house", steps=2, seed=3)
    before = engine.run(req, timeout=120)
    path = write_kohya(make_lora(tiny, seed=7), tmp_path / "lcm-lora-test.safetensors", 1.0)
    ev = engine.wait(engine.add_lora(str(path), 1.5), 120)
    assert isinstance(ev, LorasChanged), ev
    assert ev.info.loras == (("lcm-lora-test", 1.5),)
    # a few-step LoRA's name sets the defaults the editor offers
    assert ev.info.few_step == "lcm-lora" and ev.info.defaults["sampler"] == "lcm"
    with_lora = engine.run(req, timeout=120)
    assert isinstance(with_lora, Finished)
    assert not np.array_equal(with_lora.image, before.image)
    assert with_lora.parameters["loras"][0]["name"] == "lcm-lora-test"
    assert "<lora:lcm-lora-test:1.5>" in format_parameters(with_lora.parameters)
    # a bad file fails with one sentence and the LoRA already there stays
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    failed = engine.wait(engine.add_lora(str(bad)), 120)
    assert isinstance(failed, Failed) and failed.kind == "LoraError" and "\n" not in failed.message
    assert engine.model_info.loras == (("lcm-lora-test", 1.5),)
    ev = engine.wait(engine.set_lora_weight("lcm-lora-test", 0.5), 120)
    assert ev.info.loras == (("lcm-lora-test", 0.5),)
    ev = engine.wait(engine.remove_lora("lcm-lora-test"), 120)
    assert isinstance(ev, LorasChanged) and ev.info.loras == () and ev.info.few_step == ""
    after = engine.run(req, timeout=120)
    assert np.array_equal(after.image, before.image)  # removal restored the model exactly
    assert "loras" not in after.parameters


def test_cli_fuses_loras_and_writes_them_into_the_png(tiny, tmp_path, capsys, monkeypatch):
    from engine import cli
    from engine.metadata import lora_fields, read_png_parameters

    path = write_diffusers(make_lora(tiny, seed=9), tmp_path / "ink.safetensors")
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--model", "builtin:tiny", "--device", "cpu", "--steps", "2", "-p", "a"]
    code = cli.main([*argv, "--lora", f"{path}:0.7", "-o", "out.png"])
    assert code == 0, capsys.readouterr().err
    parsed = read_png_parameters(tmp_path / "out.png")
    assert lora_fields(parsed) == [{"name": "ink", "weight": 0.7, "hash": lora_mod.lora_hash(path)}]
    (tmp_path / "bad.safetensors").write_bytes(b"\0" * 40)
    code = cli.main([*argv, "--lora", "bad.safetensors", "-o", "bad.png"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: bad.safetensors is not a readable")
    assert cli.lora_argument("C:/loras/a.safetensors") == ("C:/loras/a.safetensors", 1.0)
    assert cli.lora_argument("a.safetensors:-0.5") == ("a.safetensors", -0.5)


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_sdxl_loras_reach_both_text_encoders(tmp_path, layout):
    from engine.models import load_model

    xl = load_model("builtin:tiny-xl", device="cpu")
    unet_layer = next(n for n, _ in xl.unet.named_modules() if n.endswith("attn2.to_k"))
    parts = (
        ("unet", (unet_layer,)),
        ("text_encoder", TEXT_LAYERS),
        ("text_encoder_2", TEXT_LAYERS),
    )
    snap = snapshot(xl)
    factors = make_lora(xl, seed=11, alpha=1.0 if layout == "kohya" else None, parts=parts)
    if layout == "kohya":
        path = write_kohya(factors, tmp_path / "xl.safetensors", 1.0, KOHYA_XL)
    else:
        path = write_diffusers(factors, tmp_path / "xl.safetensors")
    add_lora(xl, path, 0.6)
    assert_fused(xl, snap, factors, 0.6)
    remove_lora(xl, "xl")
    assert_exactly(xl, snap)
