"""The corpus: checks, the character vocabulary, the train/val split and batch sampling."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


class CorpusError(ValueError):
    """The corpus cannot be used; the message names the file and the fix."""


class CharTokenizer:
    """Maps each distinct character of the corpus to an id, in sorted order."""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {char: i for i, char in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        return sorted({char for char in text if char not in self.index})

    def encode(self, text: str) -> list[int]:
        return [self.index[char] for char in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


@dataclass
class Corpus:
    tokenizer: CharTokenizer
    train: torch.Tensor  # int64 ids
    val: torch.Tensor
    sha256: str  # of the file's bytes: what a run's checkpoints were trained on

    @property
    def characters(self) -> int:
        return len(self.train) + len(self.val)


def load_corpus(path: str | Path, block_size: int, val_fraction: float) -> Corpus:
    """Read and check the corpus; the last val_fraction of it is the validation split."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus {path} does not exist or is not a file; pass --data PATH to a text file")
    raw = path.read_bytes()
    if not raw:
        raise CorpusError(f"corpus {path} is empty; give it some text to train on")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"corpus {path} is not UTF-8 text (bad byte at offset {error.start}); "
                          "convert it to UTF-8") from None
    if "\x00" in text:
        raise CorpusError(f"corpus {path} contains NUL bytes, so it is not UTF-8 text (UTF-16 text has "
                          "them); convert it to UTF-8 or pass a text file")
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    split = int(len(ids) * (1.0 - val_fraction))
    train, val = ids[:split], ids[split:]
    for name, part in (("training", train), ("validation", val)):
        # A sample needs block_size inputs plus one target.
        if len(part) <= block_size:
            raise CorpusError(
                f"corpus {path} is too short: its {name} split has {len(part)} characters but "
                f"block_size={block_size} needs more than that; use a longer corpus or a smaller block_size")
    return Corpus(tokenizer=tokenizer, train=train, val=val, sha256=hashlib.sha256(raw).hexdigest())


def sample_batch(data: torch.Tensor, batch_size: int, block_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of the data: inputs and the next-character targets."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    windows = data[starts.unsqueeze(1) + torch.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]
