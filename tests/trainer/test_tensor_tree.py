"""tensor_tree: what peers send each other, packed without pickle and unpacked to the same values."""

from __future__ import annotations

import pickle

import pytest
import torch

from chargpt import tensor_tree
from chargpt.model import GPT, GPTConfig


def optimizer_state() -> dict:
    """A real AdamW state: integer keys, tuples (betas), scalar tensors, None values."""
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def assert_same(expected, actual, where="state"):
    assert type(expected) is type(actual) or isinstance(expected, dict), (where, type(expected), type(actual))
    if isinstance(expected, torch.Tensor):
        assert expected.dtype == actual.dtype and expected.shape == actual.shape, where
        assert torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert list(expected) == list(actual), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_same(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


def test_a_training_state_comes_back_with_its_types_keys_and_values():
    state = optimizer_state()
    state.update(rng=[{"torch": torch.get_rng_state(), "batches": torch.Generator().get_state()}],
                 step=7, vocab=["a", "b"], metrics='{"step": 1}\n', loss=float("inf"), nothing=None,
                 half=torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), empty=torch.zeros(0, 4))
    unpacked = tensor_tree.unpack(tensor_tree.pack(state))
    assert_same(state, unpacked)
    assert 0 in unpacked["optimizer"]["state"]  # integer keys stay integers: the optimizer needs them
    assert unpacked["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)


def test_unpacked_tensors_own_their_memory():
    packed = tensor_tree.pack({"a": torch.ones(3), "b": torch.zeros(1000)})
    tensor = tensor_tree.unpack(packed)["a"]
    assert tensor.untyped_storage().nbytes() == 3 * 4


def test_unpacking_never_unpickles(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    state = optimizer_state()
    assert_same(state, tensor_tree.unpack(torch.frombuffer(bytearray(tensor_tree.pack(state)), dtype=torch.uint8)))


def test_objects_that_are_not_data_are_refused():
    with pytest.raises(TypeError, match="a set cannot be packed"):
        tensor_tree.pack({"a": {1, 2}})


@pytest.mark.parametrize("data, message", [
    (b"\x01", "too short"),
    ((1000).to_bytes(8, "little") + b"{}", "runs past the end"),
    ((2).to_bytes(8, "little") + b"{x", "not JSON"),
])
def test_malformed_bytes_raise_a_clear_error(data, message):
    with pytest.raises(tensor_tree.MalformedTree, match=message):
        tensor_tree.unpack(data)


def test_a_tensor_that_claims_more_bytes_than_were_sent_is_refused():
    packed = tensor_tree.pack({"a": torch.ones(4)})
    with pytest.raises(tensor_tree.MalformedTree, match="past the end"):
        tensor_tree.unpack(packed[:-8])


def test_a_dtype_outside_the_list_is_refused():
    packed = tensor_tree.pack({"a": torch.ones(1)}).replace(b"torch.float32", b"torch.object_")
    with pytest.raises(tensor_tree.MalformedTree, match="not allowed"):
        tensor_tree.unpack(packed)
