"""Damage a saved torch file as a bad disk or a bad copy would: one byte flipped in the middle of its
largest tensor, with its size and zip structure kept, so that torch.load still reads it. The trainer
tests import it; the fault tests hand this file to a lab host's python3 as a script:

    python3 -c "$(cat damage.py)" DIRECTORY PATTERN    damages the newest file that matches, prints its name

Standard library only: a lab host has no torch."""

import pathlib
import struct
import sys
import zipfile


def damage_tensor_bytes(path: pathlib.Path) -> None:
    with zipfile.ZipFile(path) as archive:
        entry = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda info: info.file_size)
    with open(path, "r+b") as handle:
        handle.seek(entry.header_offset + 26)  # the local header's name and extra field lengths
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        middle = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        handle.seek(middle)
        byte = handle.read(1)[0]
        handle.seek(middle)
        handle.write(bytes([byte ^ 0xFF]))


if __name__ == "__main__":
    newest = max(pathlib.Path(sys.argv[1]).glob(sys.argv[2]))
    damage_tensor_bytes(newest)
    print(newest.name)
