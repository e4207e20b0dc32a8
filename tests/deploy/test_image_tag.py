"""The trainer image's tag (roles/trainer_image/filter_plugins/image_tag.py): the build context's
files and the base image name it, and nothing that app/.dockerignore leaves out does."""

from __future__ import annotations

import hashlib
import importlib.util

from .helpers import REPO

_spec = importlib.util.spec_from_file_location("image_tag", REPO / "roles/trainer_image/filter_plugins/image_tag.py")
image_tag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_tag)

SOURCE = "/repo/app"
CONTEXT = [{"path": f"{SOURCE}/Dockerfile", "checksum": "aa"}, {"path": f"{SOURCE}/chargpt/train.py", "checksum": "bb"}]


def tag(files, base="python:3.11-slim"):
    return image_tag.build_context_tag(files, SOURCE, base)


def test_the_tag_is_the_hash_of_the_base_image_and_the_files_by_relative_path():
    expected = hashlib.sha256(b"python:3.11-slim\nDockerfile aa\nchargpt/train.py bb").hexdigest()[:12]
    assert tag(CONTEXT) == expected
    assert tag(list(reversed(CONTEXT))) == expected, "the order find returns them in must not matter"


def test_a_changed_file_or_base_image_changes_the_tag():
    changed = [CONTEXT[0], {**CONTEXT[1], "checksum": "cc"}]
    assert len({tag(CONTEXT), tag(changed), tag(CONTEXT, base="chargpt-base:bookworm"),
                tag(CONTEXT + [{"path": f"{SOURCE}/chargpt/new.py", "checksum": "dd"}])}) == 4


def test_what_the_image_leaves_out_does_not_change_the_tag():
    left_out = [f"{SOURCE}/chargpt/__pycache__/train.cpython-311.pyc", f"{SOURCE}/chargpt/model.pyc",
                f"{SOURCE}/chargpt.egg-info/PKG-INFO", f"{SOURCE}/.pytest_cache/v/cache",
                f"{SOURCE}/build/lib/chargpt/train.py", f"{SOURCE}/dist/chargpt.whl"]
    assert tag(CONTEXT + [{"path": path, "checksum": "ee"} for path in left_out]) == tag(CONTEXT)
    # Only the context's own build/ and dist/ folders are left out.
    assert tag(CONTEXT + [{"path": f"{SOURCE}/chargpt/build/x.py", "checksum": "ff"}]) != tag(CONTEXT)
