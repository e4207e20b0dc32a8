"""lab/lab refuses bad input with one clear line and changes nothing."""

from __future__ import annotations

import os
import subprocess

import pytest

from .lab import REPO


def lab_command(*args: str, lab_name: str = "e2e-badinput"):
    return subprocess.run([str(REPO / "lab" / "lab"), *args], cwd=REPO, env=dict(os.environ, LAB_NAME=lab_name),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["up", "--hosts", "0"], "--hosts '0' is not a number of hosts"),
    (["up", "--hosts", "two"], "--hosts 'two' is not a number of hosts"),
    (["up", "--nodes", "2"], "unknown argument '--nodes'"),
    (["add"], "has no hosts: run 'lab/lab up' first"),
    (["reboot", "one"], "usage: lab/lab reboot N [--power-loss]"),
    (["reboot", "1", "--hard"], "usage: lab/lab reboot N [--power-loss]"),
    (["reboot", "1"], "has no running host e2e-badinput-host-1"),
    (["frobnicate"], "usage:"),
])
def test_bad_arguments_are_refused(args, message):
    result = lab_command(*args)
    assert result.returncode != 0, f"lab/lab {args} succeeded: {result.stdout}"
    assert message in result.stderr, result.stderr
    assert not (REPO / "inventory" / "e2e-badinput").exists(), "a refused command wrote an inventory"


@pytest.mark.parametrize("lab_name", ["Lab", "my_lab", "example", "-x"])
def test_bad_lab_names_are_refused(lab_name):
    result = lab_command("status", lab_name=lab_name)
    assert result.returncode != 0 and "LAB_NAME" in result.stderr, result.stderr


def test_status_of_an_absent_lab():
    result = lab_command("status")
    assert result.returncode == 0 and "no hosts" in result.stdout, result.stdout + result.stderr
