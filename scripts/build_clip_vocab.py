"""Build the CLIP BPE tokenizer files shipped in ``evallearn/assets/clip_tokenizer``.

The OpenAI CLIP byte-pair vocabulary (MIT licence) is distributed on PyPI inside the
``open-clip-torch`` wheel as ``open_clip/bpe_simple_vocab_16e6.txt.gz``. This script turns
that file into the ``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer``
reads, following the construction of CLIP's ``SimpleTokenizer``: the 256 byte symbols, the
same symbols with the end-of-word marker, one symbol per merge, then the two special tokens.

    pip download --no-deps open-clip-torch -d /tmp/oc && unzip ... bpe_simple_vocab_16e6.txt.gz
    python scripts/build_clip_vocab.py /path/to/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """GPT-2 / CLIP reversible byte -> printable unicode table, in byte order of the table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main(src: str, out: str = "src/evallearn/assets/clip_tokenizer") -> None:
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (dst / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges), encoding="utf-8"
    )
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])
