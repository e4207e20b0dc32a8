"""The corpus: checks, the character vocabulary, the train/val split and batch sampling."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    """The checked text. Its ids become tensors when training first reads them: `chargpt check`
    reads the corpus without loading torch."""
    tokenizer: CharTokenizer
    text: str
    train_chars: int  # the first ones train, the rest validate
    sha256: str  # of the file's bytes: what a run's checkpoints were trained on

    @property
    def characters(self) -> int:
        return len(self.text)

    @cached_property
    def ids(self) -> torch.Tensor:
        """Every character's id, int64."""
        import torch

        return torch.tensor(self.tokenizer.encode(self.text), dtype=torch.int64)

    @cached_property
    def train(self) -> torch.Tensor:
        return self.ids[:self.train_chars]

    @cached_property
    def val(self) -> torch.Tensor:
        return self.ids[self.train_chars:]


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
    split = int(len(text) * (1.0 - val_fraction))
    for name, characters in (("training", split), ("validation", len(text) - split)):
        # A sample needs block_size inputs plus one target.
        if characters <= block_size:
            raise CorpusError(
                f"corpus {path} is too short: its {name} split has {characters} characters but "
                f"block_size={block_size} needs more than that; use a longer corpus or a smaller block_size")
    return Corpus(tokenizer=CharTokenizer.from_text(text), text=text, train_chars=split,
                  sha256=hashlib.sha256(raw).hexdigest())


def sample_batch(data: torch.Tensor, batch_size: int, block_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of the data: inputs and the next-character targets."""
    import torch

    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    windows = data[starts.unsqueeze(1) + torch.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]
