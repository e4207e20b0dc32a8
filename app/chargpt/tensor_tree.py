"""Nested states (dicts, lists, tuples, numbers, strings, tensors) as bytes that hold no pickle.

What peers send each other (a checkpoint to resume from, the ranks' RNG states) travels in this
form: a JSON skeleton, with each tensor replaced by its dtype, shape and place, followed by the
tensors' raw bytes. Unpacking only builds dicts, lists and tensors, so a peer cannot make another
one run code, whatever it sends.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import torch

_HEADER = struct.Struct("<Q")  # the skeleton's length in bytes
_ALIGN = 16  # each tensor starts at a multiple of this, so that it can be viewed as its dtype
_TENSOR, _DICT, _TUPLE = "$tensor", "$dict", "$tuple"
_DTYPES = {str(dtype): dtype for dtype in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}


class MalformedTree(ValueError):
    """The bytes are not a packed tree (a peer sent something else, or they were cut short)."""


def pack(tree) -> bytes:
    tensors: list[torch.Tensor] = []
    skeleton = json.dumps(_encode(tree, tensors, [0]), separators=(",", ":")).encode()
    data_start = _aligned(_HEADER.size + len(skeleton))
    parts = [_HEADER.pack(len(skeleton)), skeleton, bytes(data_start - _HEADER.size - len(skeleton))]
    for tensor in tensors:
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        parts += [data, bytes(_aligned(len(data)) - len(data))]
    return b"".join(parts)


def digest(tree) -> str:
    """sha256 of what pack(tree) holds, without building it: equal trees (the same keys in the same
    order, the same values, tensors of the same dtype, shape and bytes) have equal digests, however
    they were stored or sent."""
    tensors: list[torch.Tensor] = []
    hasher = hashlib.sha256(json.dumps(_encode(tree, tensors, [0]), separators=(",", ":")).encode())
    for tensor in tensors:
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


def unpack(data: bytes | bytearray | torch.Tensor):
    """The tree that pack() made; the tensors are copies that own their memory."""
    buffer = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if buffer.numel() < _HEADER.size:
        raise MalformedTree("too short to hold a packed tree")
    (length,) = _HEADER.unpack(bytes(buffer[:_HEADER.size].numpy()))
    if _HEADER.size + length > buffer.numel():
        raise MalformedTree(f"the skeleton's length ({length} bytes) runs past the end of the data")
    try:
        skeleton = json.loads(bytes(buffer[_HEADER.size:_HEADER.size + length].numpy()))
    except ValueError as error:
        raise MalformedTree(f"the skeleton is not JSON ({error})") from None
    return _decode(skeleton, buffer, _aligned(_HEADER.size + length))


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _encode(value, tensors: list, offset: list[int]):
    """offset[0]: where the next tensor's bytes start, counted from the end of the skeleton."""
    if isinstance(value, torch.Tensor):
        if str(value.dtype) not in _DTYPES:
            raise TypeError(f"tensors of dtype {value.dtype} cannot be packed")
        tensors.append(value)
        spec = [str(value.dtype), list(value.shape), offset[0]]
        offset[0] += _aligned(value.numel() * value.element_size())
        return {_TENSOR: spec}
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("$") for key in value):
            return {key: _encode(item, tensors, offset) for key, item in value.items()}
        return {_DICT: [[_encode(key, tensors, offset), _encode(item, tensors, offset)]
                        for key, item in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item, tensors, offset) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors, offset) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a {type(value).__name__} cannot be packed (only dicts, lists, tuples, numbers, "
                    "strings and tensors)")


def _decode(skeleton, buffer: torch.Tensor, data_start: int):
    def tensor(spec) -> torch.Tensor:
        if not (isinstance(spec, list) and len(spec) == 3):
            raise MalformedTree(f"{spec!r} does not describe a tensor")
        dtype_name, shape, offset = spec
        dtype = _DTYPES.get(dtype_name)
        if (dtype is None or not isinstance(shape, list) or not isinstance(offset, int) or offset < 0
                or not all(isinstance(size, int) and size >= 0 for size in shape)):
            raise MalformedTree(f"a tensor of dtype {dtype_name!r}, shape {shape!r} at {offset!r} is not allowed")
        nbytes = math.prod(shape) * dtype.itemsize
        start = data_start + offset
        if start + nbytes > buffer.numel():
            raise MalformedTree("a tensor runs past the end of the data")
        # A copy: a view would keep the whole buffer alive, and torch.save would write all of it.
        return buffer[start:start + nbytes].view(dtype).reshape(shape).clone()

    def decode(value):
        if isinstance(value, list):
            return [decode(item) for item in value]
        if not isinstance(value, dict):
            return value
        if _TENSOR in value:
            return tensor(value[_TENSOR])
        if _TUPLE in value:
            return tuple(decode(item) for item in value[_TUPLE])
        if _DICT in value:
            return {decode(key): decode(item) for key, item in value[_DICT]}
        return {key: decode(item) for key, item in value.items()}

    return decode(skeleton)
