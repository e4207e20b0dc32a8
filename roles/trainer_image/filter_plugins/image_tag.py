"""The trainer image's tag, derived from its build context: one tag is one exact image."""

from __future__ import annotations

import hashlib
import os
import re

# What app/.dockerignore leaves out of the image does not change its name either.
IGNORED = re.compile(r"/__pycache__/|\.egg-info/|/\.pytest_cache/|\.pyc$")
IGNORED_TOP = ("build", "dist")


def build_context_tag(files: list[dict], source_dir: str, base_image: str) -> str:
    """12 hex digits of the sha256 of the base image's name and every file of the build context
    (ansible.builtin.find's results with their checksums), by path relative to source_dir."""
    lines = []
    for found in files:
        relative = os.path.relpath(found["path"], source_dir)
        if IGNORED.search(found["path"]) or relative.split(os.sep, 1)[0] in IGNORED_TOP and os.sep in relative:
            continue
        lines.append(f"{relative} {found['checksum']}")
    return hashlib.sha256("\n".join([base_image, *sorted(lines)]).encode()).hexdigest()[:12]


class FilterModule:
    def filters(self):
        return {"chargpt_build_context_tag": build_context_tag}
