"""Fault cases 6a-6l (issues 5 and 26): bad inventories, corpora and runs too big for their memory.
site.yml must stop in its preflight play with one message that names the problem, and no host may
change. They run first among the fault cases, on the fault lab as its base run left it (see
fault_lab.py)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import CORPUS
from harness.inventory import Inventory

from .fault_lab import BASE_RUN, recording, run_vars
from .faults import CaseResult, FaultRun, snapshot, snapshot_differences
from .lab import Lab


def lab_inventory(lab: Lab) -> Inventory:
    """The lab's inventory, group_vars inlined: one master, one worker."""
    inventory = Inventory.read(lab.inventory)
    assert len(inventory.master) == 1 and len(inventory.workers) == 1, (
        f"{lab.inventory}: expected one master and one worker, has {inventory.master} and {inventory.workers}")
    return inventory


def host_var(name: str, value):
    """The worker sets a variable."""
    return lambda inventory: inventory.with_host_var(inventory.workers[0], name, value)


def group_var(name: str, value):
    return lambda inventory: inventory.with_group_var(name, value)


def no_master(inventory: Inventory) -> Inventory:
    return replace(inventory, master=[], workers=inventory.master + inventory.workers)


def two_masters(inventory: Inventory) -> Inventory:
    return replace(inventory, master=inventory.master + inventory.workers, workers=[])


def write_corpus(tmp_path: Path, name: str, data: bytes | None) -> str:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    return str(path)


# (case, what is wrong, how the inventory changes (tmp_path -> change), fragments of the message; {master}
# and {worker} stand for the lab's host names, {corpus} for the corpus path)
BAD_INPUTS = [
    ("6a", "duplicated node rank (the worker sets cluster_node_rank: 0)", lambda tmp: host_var("cluster_node_rank", 0),
     ['The node ranks {{"{master}": 0, "{worker}": 0}}', "must be 0..1, each once"]),
    ("6b", "missing node rank (ranks 0 and 2)", lambda tmp: host_var("cluster_node_rank", 2),
     ['The node ranks {{"{master}": 0, "{worker}": 2}}', "must be 0..1, each once"]),
    ("6c", "no master (both hosts under workers)", lambda tmp: no_master,
     ["The inventory group `master` holds 0 host(s)", "must hold exactly one"]),
    ("6d", "two masters (both hosts under master)", lambda tmp: two_masters,
     ["The inventory group `master` holds 2 host(s)", "must hold exactly one"]),
    ("6e", 'wrong variable type (cluster_nproc_per_node: "two", a string)',
     lambda tmp: host_var("cluster_nproc_per_node", "two"),
     ["argument 'cluster_nproc_per_node' is of type str and we were unable to convert to int"]),
    ("6f", "an interface name that does not exist (trainer_gloo_socket_ifname: nosuch0)",
     lambda tmp: host_var("trainer_gloo_socket_ifname", "nosuch0"),
     ['trainer_gloo_socket_ifname is "nosuch0", but {worker} has no such interface', "or to auto"]),
    ("6g", "corpus missing", lambda tmp: group_var("trainer_corpus_path", write_corpus(tmp, "missing.txt", None)),
     ["corpus {corpus} does not exist or is not a file"]),
    ("6h", "corpus empty", lambda tmp: group_var("trainer_corpus_path", write_corpus(tmp, "empty.txt", b"")),
     ["corpus {corpus} is empty"]),
    ("6i", "corpus not UTF-8 text",
     lambda tmp: group_var("trainer_corpus_path", write_corpus(
         tmp, "latin1.txt", CORPUS.read_bytes()[:8192] + "Très élégant\n".encode("latin-1") * 100)),
     ["corpus {corpus} is not UTF-8 text", "convert it to UTF-8"]),
    # The smoke preset's context is 32 characters; the validation split of 300 has 30.
    ("6j", "corpus too short for the context (300 bytes)",
     lambda tmp: group_var("trainer_corpus_path", write_corpus(tmp, "short.txt", CORPUS.read_bytes()[:300])),
     ["corpus {corpus} is too short: its validation split has 30 characters but block_size=32"]),
    ("6k", "a memory limit below what the trainers take before any model (trainer_memory_limit: 256m)",
     lambda tmp: group_var("trainer_memory_limit", "256m"),
     ["chargpt: error: this run needs about ", "more than the memory limit of 0.25 GiB (256m), which is below the",
      "raise the limit above"]),
    ("6l", "a run too big for its memory limit (the original preset under trainer_memory_limit: 4g)",
     lambda tmp: group_var("trainer_memory_limit", "4g"),
     ["chargpt: error: this run needs about ", "more than the memory limit of 4.00 GiB (4g): set micro_batch_size="]),
]


@pytest.fixture(scope="module")
def settled_hosts(fault_lab) -> dict:
    """A snapshot of the hosts after the base run finished, before the bad-input cases."""
    run = FaultRun(fault_lab.lab, fault_lab.cluster(), BASE_RUN["run_id"], BASE_RUN["overrides"]["max_steps"])
    assert run.summary() is not None, "the base run did not finish"
    return snapshot(fault_lab.cluster().names)


# Run variables of a case beside those of the base run (extra variables beat the inventory's).
RUN_VAR_CHANGES = {"6l": {"trainer_preset": "original"}}


@pytest.mark.parametrize("case, problem, make_change, fragments", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_stops_before_any_host_changes(fault_lab, settled_hosts, tmp_path, case, problem, make_change,
                                                 fragments):
    lab = fault_lab.lab
    cluster = fault_lab.cluster()
    bad = make_change(tmp_path)(lab_inventory(lab))
    inventory = bad.write(tmp_path / "hosts.yml")
    corpus = bad.all_vars.get("trainer_corpus_path", "")
    names = {"master": cluster.names[0], "worker": cluster.names[1], "corpus": corpus}
    with recording(fault_lab, CaseResult(case, f"site.yml with {problem}", "")) as result:
        started = time.monotonic()
        run_vars_ = {**run_vars(BASE_RUN["run_id"], BASE_RUN["overrides"], wait=True), **RUN_VAR_CHANGES.get(case, {})}
        run = lab.playbook("site.yml", "-e", json.dumps(run_vars_), log_name=f"faults-bad-input-{case}",
                           inventory=inventory)
        exit_after = round(time.monotonic() - started, 1)
        messages = [message.replace(f"{tmp_path}/", "") for message in run.failure_messages()]
        result.details = {"exit_code": run.returncode, "exit_after_s": exit_after}
        result.outcome = f"exit {run.returncode} after {exit_after} s, in preflight: {' / '.join(messages)}"
        assert run.returncode != 0, f"site.yml accepted {problem} (log {run.log})"
        assert len(messages) == 1, f"expected one message, got {messages} (log {run.log})"
        for fragment in fragments:
            expected = fragment.format(**names)
            assert expected in run.text, (
                f"{expected!r} is not in the output of site.yml (log {run.log}):\n{run.tail(30)}")
        assert "PLAY [Install the Docker engine" not in run.output, f"site.yml went past the preflight play ({run.log})"
        changed = run.changed_hosts()
        assert not changed, f"changed={changed} (log {run.log})"
        differences = snapshot_differences(settled_hosts, snapshot(cluster.names))
        assert not differences, "site.yml failed but changed the hosts:\n" + "\n".join(differences[:40])
        result.progress_lost_steps = 0
