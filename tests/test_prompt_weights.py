"""The (word:1.3) prompt-weight syntax: parser, token weights, word positions, emphasis."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import EditRequest, Finished
from engine.denoiser import Denoiser
from engine.prompts import (
    parse_weights,
    plain_text,
    token_weights,
    without_silenced,
    word_positions,
)


@pytest.fixture(scope="module")
def tok():
    from transformers import CLIPTokenizer

    from engine.loaders import CLIP_TOKENIZER_DIR

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))


def ids(tok, text):
    return tok(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


# ---- parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red house", [("a red house", 1.0)]),
        ("a (red:1.3) house", [("a ", 1.0), ("red", 1.3), (" house", 1.0)]),
        ("(red)", [("red", 1.1)]),
        ("[red]", [("red", 1 / 1.1)]),
        ("((red))", [("red", 1.1 * 1.1)]),
        ("([red])", [("red", 1.0)]),
        ("(a (b:2):0.5)", [("a ", 0.5), ("b", 1.0)]),
        ("(a [b]:2)", [("a ", 2.0), ("b", 2 / 1.1)]),
        ("(a:b:1.2)", [("a:b", 1.2)]),  # the last colon holds the weight
        ("( red : 1.5 )", [(" red ", 1.5)]),
        ("(red:.5) (blue:2.)", [("red", 0.5), (" ", 1.0), ("blue", 2.0)]),
        ("(red:1.0)", [("red", 1.0)]),
        ("(a) (b)", [("a", 1.1), (" ", 1.0), ("b", 1.1)]),
        ("(a b)(c)", [("a bc", 1.1)]),  # adjacent equal weights merge
        # escapes
        (r"\(red\) \[x\]", [("(red) [x]", 1.0)]),
        (r"(a \(b\))", [("a (b)", 1.1)]),
        (r"a\\b \q", [("a\\b \\q", 1.0)]),
        # malformed: literal, nothing lost but the syntax itself
        ("a (red house", [("a (red house", 1.0)]),
        ("a red) house", [("a red) house", 1.0)]),
        ("a [red house)", [("a [red house)", 1.0)]),
        ("(a [b)", [("a [b", 1.1)]),  # the unmatched [ inside stays text
        ("(a:abc) b", [("(a:abc) b", 1.0)]),
        ("(photo: close up)", [("(photo: close up)", 1.0)]),
        ("(a:) (b:1e3) (c:nan)", [("(a:) (b:1e3) (c:nan)", 1.0)]),
        ("(a:x (b:2))", [("(a:x ", 1.0), ("b", 2.0), (")", 1.0)]),
        ("[a:1.2]", [("a:1.2", 1 / 1.1)]),  # no weight form in square brackets
        ("() (:1.3)x", [(" x", 1.0)]),  # empty groups vanish
        # clamped to [0, 10]
        ("(a:-2) (b:50) ((c:9.5))", [("a", 0.0), (" ", 1.0), ("b", 10.0), (" ", 1.0), ("c", 10.0)]),
        ("", []),
    ],
)
def test_parse_weights(text, expected):
    got = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])
    assert plain_text(text) == "".join(t for t, _ in expected)


@given(st.text(alphabet="ab :1.\\()[]", max_size=30))
@settings(max_examples=300, deadline=None)
def test_parser_never_fails_and_never_loses_text(text):
    segments = parse_weights(text)
    assert all(t and 0.0 <= w <= 10.0 for t, w in segments)
    assert all(a[1] != b[1] for a, b in zip(segments, segments[1:]))
    plain = plain_text(text)
    # the plain text keeps every letter, in order
    assert [c for c in plain if c in "ab"] == [c for c in text if c in "ab"]
    if not any(c in text for c in "()[]\\"):
        assert plain == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a (snowy:0) mountain range", "a mountain range"),
        ("(snowy:0) peaks, (red:1.2) walls", "peaks, (red:1.2) walls"),
        ("a [b] (c:0) \\(d\\)", "a (b:0.909090909091) \\(d\\)"),
        ("(a (b:0) c:1.5)", "(a:1.5) (c:1.5)"),
        ("(all of it:0)", ""),
        ("a (b:0.5) c", "a (b:0.5) c"),  # nothing silenced: the text itself
        ("a ((b)) c", "a ((b)) c"),
    ],
)
def test_without_silenced(text, expected):
    assert without_silenced(text) == expected


@given(st.text(alphabet="ab :0.5\\()[]", max_size=30))
@settings(max_examples=300, deadline=None)
def test_without_silenced_keeps_every_other_weight(text):
    kept = [(t, w) for t, w in parse_weights(text) if w != 0.0]
    got = parse_weights(without_silenced(text))
    assert "".join(t for t, _ in got).split() == "".join(t for t, _ in kept).split()
    assert all(w != 0.0 for _, w in got)


# ---- token weights ------------------------------------------------------------------------

PROMPTS = [
    "a red house beside two pine trees",
    "a (red:1.3), house, 2 trees; (pine:0.8)!",
    "masterpiece, ((best quality)), [blurry], 1girl, 4k 8k 16:9",
    "Déjà-vu café — naïve 日本語 emoji 🙂 it's Tom's",
    "red red red (red) [red] (red:2) red",
    "(red)dish (blue:1.5)berries under(score)s",
    r"\(literal\) brackets and a (bad:weight) and a (stray",
    "tabs\tand\nnewlines   and  spaces ",
    "",
    "(:2)",
]


@pytest.mark.parametrize("text", PROMPTS)
def test_token_ids_are_the_plain_texts(tok, text):
    tw = token_weights(tok, text)
    assert tw.ids == ids(tok, plain_text(text))
    assert len(tw.weights) == len(tw.words) == len(tw.ids)
    n_words = len(plain_text(text).split())
    assert tw.words == sorted(tw.words) and all(0 <= w < n_words for w in tw.words)


def test_token_weights_fall_on_the_weighted_tokens(tok):
    tw = token_weights(tok, "a (red:1.3), house")
    assert tok.convert_ids_to_tokens(tw.ids) == ["a</w>", "red</w>", ",</w>", "house</w>"]
    assert tw.weights == [1.0, 1.3, 1.0, 1.0]  # the comma is not weighted
    assert tw.words == [0, 1, 1, 2]
    # a boundary inside a BPE piece: the whole word takes the majority's weight
    tw = token_weights(tok, "(reddi:2)sh and (ab:2)cdefg")
    assert tw.ids == ids(tok, "reddish and abcdefg")
    assert tw.weights[0] == 2.0 and set(tw.weights[-len(ids(tok, "abcdefg")) :]) == {1.0}
    assert not token_weights(tok, "(red:1.0) [(house)]").weighted


WORDS = ["a", "red", "house", "pine", "trees", "1girl", "4k", "x2.5", "it's", "naïve", "日本"]
PUNCT = ["", ",", ".", "!", ";", ":", "-", "..."]


@st.composite
def weighted_prompts(draw):
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        word = draw(st.sampled_from(WORDS)) + draw(st.sampled_from(PUNCT))
        form = draw(st.sampled_from(["{}", "({})", "[{}]", "({}:1.4)", "(({}:0.7))", "{}"]))
        if form == "({})" and word.endswith(":"):
            form = "{}"  # "(a:)" is a malformed weight, literal text
        parts.append((form.format(word), word))
        glue = draw(st.sampled_from([" ", " ", ", ", "", "\t"]))
        parts.append((glue, glue))
    return "".join(p for p, _ in parts), "".join(q for _, q in parts)


@given(weighted_prompts())
@settings(max_examples=60, deadline=None)
def test_token_ids_property(tok, prompt):
    text, plain = prompt
    assert plain_text(text) == plain
    tw = token_weights(tok, text)
    assert tw.ids == ids(tok, plain)
    assert len(tw.weights) == len(tw.words) == len(tw.ids)


def test_words_tokenize_independently_in_clip(tok):
    """CLIP's BPE splits on a regex that never crosses whitespace: token_weights relies on it."""
    for text in PROMPTS:
        plain = plain_text(text)
        assert [i for w in plain.split() for i in ids(tok, w)] == ids(tok, plain)


# ---- word positions -----------------------------------------------------------------------


def test_word_positions(tok):
    text = "a red house beside two pine trees"
    assert word_positions(tok, text, "pine trees") == [6, 7]
    assert word_positions(tok, text, "a") == [1]
    assert word_positions(tok, text, "PINE") == [6]
    assert word_positions(tok, text, "pine house") == []
    assert word_positions(tok, text, "") == []
    assert word_positions(tok, text, "hous") == []  # whole words only
    # weight syntax and punctuation around words do not count
    text = "a (red:1.4) house, two [pine], trees and a red car"
    toks = tok.convert_ids_to_tokens(token_weights(tok, text).ids)
    assert [toks[p - 1] for p in word_positions(tok, text, "red")] == ["red</w>", "red</w>"]
    assert [toks[p - 1] for p in word_positions(tok, text, "house")] == ["house</w>"]
    assert [toks[p - 1] for p in word_positions(tok, text, "pine, trees")] == [
        "pine</w>",
        "trees</w>",
    ]
    # a word of several tokens gives all of them
    text = "a reddish 1girl"
    n = len(ids(tok, "1girl"))
    assert word_positions(tok, text, "1girl") == list(range(3, 3 + n))


def test_word_positions_only_in_the_first_window(tok):
    text = "house " + "tree " * 80 + "house"
    assert word_positions(tok, text, "house") == [1]
    assert word_positions(tok, "tree " * 74 + "big house", "big house") == [75]


# ---- emphasis in the denoiser -------------------------------------------------------------


def _old_encode(d, text, k=1):
    """The encoding before the weight syntax existed (plain text in, same windows)."""
    tok = d.bundle.tokenizer
    with torch.no_grad():
        full = ids(tok, text)
        if len(full) <= 75:
            t = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            parts = [d.bundle.text_encoder(t.input_ids)[0].to(d.dtype)]
        else:
            parts = []
            for i in range(0, len(full), 75):
                chunk = [tok.bos_token_id, *full[i : i + 75], tok.eos_token_id]
                chunk += [tok.pad_token_id] * (77 - len(chunk))
                parts.append(d.bundle.text_encoder(torch.tensor([chunk]))[0].to(d.dtype))
        while len(parts) < k:
            t = tok("", padding="max_length", max_length=77, return_tensors="pt")
            parts.append(d.bundle.text_encoder(t.input_ids)[0].to(d.dtype))
        return torch.cat(parts, dim=1)


LONG = "a red house at night, with a garden and a fence, " * 8 + "and a dragon"


@pytest.mark.parametrize("text, k", [("", 1), ("a red house, 2 trees!", 1), (LONG, 3)])
def test_prompts_without_syntax_encode_bit_identically(tiny_denoiser, text, k):
    d = tiny_denoiser
    d.chunks = k  # padded to k windows, as in a job with a longer prompt
    try:
        assert torch.equal(d.encode_text(text), _old_encode(d, text, k))
    finally:
        d.chunks = 1


def test_unit_weights_are_the_plain_text(tiny_denoiser):
    d = tiny_denoiser
    assert torch.equal(d.encode_text("a (red:1.0) house"), d.encode_text("a red house"))
    assert torch.equal(d.encode_text("a ([red]) house"), d.encode_text("a red house"))
    assert torch.equal(d.encode_text(r"a \(red\)"), _old_encode(d, "a (red)"))
    long_w = LONG.replace("dragon", "(dragon:1.0)")
    assert torch.equal(d.encode_text(long_w), d.encode_text(LONG))


def _mult(n, weights):
    m = torch.ones(77)
    m[1 : 1 + len(weights)] = torch.tensor(weights)
    return m[None, :, None]


def test_emphasis_scales_only_the_weighted_tokens(tiny_denoiser, tok):
    d = tiny_denoiser
    d.chunks = 1
    plain, weighted = d.encode_text("a red house"), d.encode_text("a (red:1.5) house")
    assert weighted.shape == plain.shape and d.encode_text("a (red:1.5) house") is weighted
    assert word_positions(tok, "a (red:1.5) house", "red") == [2]
    # the tiny model's final layer norm has no bias: its mean is rounding noise, no rescale
    assert plain.mean().abs() < 1e-6
    changed = (weighted - plain).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [2]
    torch.testing.assert_close(weighted[:, 2], plain[:, 2] * 1.5)


def test_emphasis_rescales_the_mean():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 77, 16, generator=g) + 0.3
    weights = [1.0, 1.5, 0.5, 1.0]
    out = Denoiser._emphasize(z, weights)
    m = _mult(77, weights)
    scale = z.mean() / (z * m).mean()
    assert 0.5 < scale < 2 and scale != 1
    torch.testing.assert_close(out, z * m * scale)
    torch.testing.assert_close(out.mean(), z.mean())
    before = out / scale  # undo the rescale: only the weighted positions changed
    changed = (before - z).abs().amax(dim=(0, 2)) > 1e-5
    assert changed.nonzero().flatten().tolist() == [2, 3]
    # a mean of ~0, or a ratio that would flip the sign: scaled, not rescaled
    centred = z - z.mean(dim=2, keepdim=True)
    torch.testing.assert_close(Denoiser._emphasize(centred, weights), centred * m)
    flip = z.clone()
    flip[:, 2] += 0.3 * 77 * 4 - flip[:, 2].mean()  # weighted -1: a mean of the other sign
    flipped = Denoiser._emphasize(flip, [1.0, -1.0])
    torch.testing.assert_close(flipped, flip * _mult(77, [1.0, -1.0]))


def test_emphasis_in_the_second_window(tiny_denoiser):
    d = tiny_denoiser
    d.chunks = 1
    text = LONG.replace("dragon", "(dragon:1.5)")
    a, b = d.encode_text(LONG), d.encode_text(text)
    assert a.shape == b.shape == (1, 154, a.shape[2])
    assert torch.equal(a[:, :77], b[:, :77])  # the first window has no weights
    assert not torch.equal(a[:, 77:], b[:, 77:])


def test_chunk_count_ignores_the_syntax(tiny_denoiser):
    d = tiny_denoiser
    text = "((((((((red))))))))" * 40
    assert d.chunk_count(text) == d.chunk_count("red" * 40) == 1


def test_generate_with_weights(engine):
    def gen(prompt):
        r = engine.run(EditRequest("generate", prompt=prompt, steps=3, seed=5), timeout=60)
        assert isinstance(r, Finished), r
        return r.image

    plain = gen("a red house")
    assert np.array_equal(gen("a (red:1.0) house"), plain)
    assert not np.array_equal(gen("a (red:1.5) house"), plain)
