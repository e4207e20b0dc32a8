import hashlib
import re

import pytest
import torch

from chargpt.data import CharTokenizer, CorpusError, load_corpus, sample_batch


def test_tokenizer_round_trip_including_non_ascii():
    text = "Hello, wörld! ¿Qué tal? 日本\n"
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.vocab_size == len(set(text))
    assert tokenizer.chars == sorted(set(text))
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.unknown("Hex!") == ["x"]


def test_corpus_split_and_vocabulary(corpus_path):
    corpus = load_corpus(corpus_path, block_size=64, val_fraction=0.1)
    text = corpus_path.read_text(encoding="utf-8")
    assert len(corpus.train) + len(corpus.val) == len(text)
    assert len(corpus.val) == len(text) - int(len(text) * 0.9)
    assert corpus.tokenizer.decode(corpus.val[:50]) == text[int(len(text) * 0.9):][:50]


def test_batches_are_windows_with_shifted_targets():
    data = torch.arange(100)
    x, y = sample_batch(data, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)  # consecutive ids, so the target is the next one


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"caf\xe9 au lait " * 20, "is not UTF-8"),
    (b"abc\x00def" * 20, "NUL"),
])
def test_unusable_corpus_is_rejected(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        load_corpus(path, block_size=8, val_fraction=0.1)


def test_corpus_too_short_for_the_context_in_the_validation_split(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("x" * 500)  # validation split: 50 characters
    with pytest.raises(CorpusError, match="validation split has 50 characters"):
        load_corpus(path, block_size=64, val_fraction=0.1)


def test_corpus_too_short_for_the_context_in_the_training_split(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("x" * 100)  # training split: 50 characters
    with pytest.raises(CorpusError, match="training split has 50 characters"):
        load_corpus(path, block_size=64, val_fraction=0.5)


@pytest.mark.parametrize("encoding, message", [
    ("utf-16", "is not UTF-8 text (bad byte at offset 0); convert it to UTF-8"),  # with its byte-order mark
    ("utf-16-le", "contains NUL bytes, so it is not UTF-8 text (UTF-16 text has them); convert it to UTF-8"),
])
def test_a_utf16_corpus_is_refused_with_the_fix(tmp_path, encoding, message):
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be\n" * 50, encoding=encoding)
    with pytest.raises(CorpusError, match=re.escape(message)):
        load_corpus(path, block_size=8, val_fraction=0.1)


def test_the_corpus_hash_is_of_its_bytes_and_a_symlink_is_followed(corpus_path, tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(corpus_path)
    corpus = load_corpus(link, block_size=64, val_fraction=0.1)
    assert corpus.sha256 == hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    assert corpus.characters == len(corpus_path.read_text(encoding="utf-8"))
