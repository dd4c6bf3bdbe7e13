"""The demo model's tokenizer: CLIP's format, learned from the demo world's vocabulary.

Byte-pair encoding (Sennrich et al. 2016): start from single byte symbols, repeatedly merge
the most frequent adjacent pair, until every word the captions use is one token. The result
is written in CLIP's vocab/merges format, so ``CLIPTokenizer`` loads it like SD's tokenizer,
and any other word still tokenizes into sub-words or single bytes.

    python -m engine.training.tokenizer assets/models/demo/tokenizer
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..build_tokenizer import bytes_to_unicode, write_clip_tokenizer
from ..world.captions import WORLD_PUNCTUATION, WORLD_VOCABULARY


def _symbols(word: str) -> tuple[str, ...]:
    """A word as CLIP's BPE sees it: byte symbols, the last one marked end-of-word."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def learn_merges(words: list[str]) -> list[str]:
    """Greedy BPE over the given words until each is a single symbol; ties broken by the
    pair's text so the result is deterministic."""
    seqs = Counter(_symbols(w) for w in words)
    merges: list[str] = []
    while any(len(s) > 1 for s in seqs):
        pairs: Counter = Counter()
        for seq, count in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += count
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(f"{a} {b}")
        merged: Counter = Counter()
        for seq, count in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            merged[tuple(out)] += count
        seqs = merged
    return merges


def build_world_tokenizer(out: Path, max_length: int = 77) -> dict[str, int]:
    words = sorted(set(WORLD_VOCABULARY) | set(WORLD_PUNCTUATION))
    return write_clip_tokenizer(out, learn_merges(words), max_length)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="build the demo world's CLIP-format tokenizer")
    p.add_argument("out", type=Path)
    vocab = build_world_tokenizer(p.parse_args(argv).out)
    print(f"{len(vocab)} tokens")


if __name__ == "__main__":
    main()
