"""Fault cases 12b and 12c (issue 26): what a run hands on is what it wrote. The model of a finished
run, damaged on the master after the run (a bad disk), is reported by the fetch and not installed on
the control node; a learning rate that diverges stops the run for good (exit 4) with the trainer's
message in site.yml and the status, and no checkpoint on any host holds a non-finite value. (12a, a
damaged checkpoint before a restart, hits the run of test_faults_processes.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from harness.roles import role_default

from .fault_lab import BASE_RUN, deploy, recording, run_vars
from .faults import CaseResult, FaultRun, damage_on_host, on_host
from .status import FAILED, status_command

DIVERGED_EXIT = 4


def run_dir_on_hosts(run_id: str) -> str:
    return f"{role_default('cluster', 'cluster_base_dir')}/runs/{run_id}"


def sha256_on_host(host: str, path: str) -> str:
    return on_host(host, "sha256sum", path).stdout.split()[0]


def test_a_model_damaged_on_the_master_is_reported_by_the_fetch_and_not_installed(fault_lab, artifacts_dir):
    master = fault_lab.cluster().names[0]
    model = f"{run_dir_on_hosts(BASE_RUN['run_id'])}/model.pt"
    installed = artifacts_dir / BASE_RUN["run_id"] / "model.pt"
    good = installed.read_bytes()
    with recording(fault_lab, CaseResult("12b", "the finished run's model.pt damaged on the master (one byte inside a "
                                                "tensor), then site.yml (trainer_wait) fetches it", "")) as result:
        on_host(master, "cp", "-p", model, f"{model}.intact")
        try:
            damage_on_host(master, str(Path(model).parent), "model.pt")
            assert sha256_on_host(master, model) != sha256_on_host(master, f"{model}.intact"), "nothing was damaged"
            playbook, took = deploy(fault_lab, run_vars(BASE_RUN["run_id"], BASE_RUN["overrides"], wait=True),
                                    "faults-fetch-damaged-model")
        finally:
            on_host(master, "mv", f"{model}.intact", model)
        messages = playbook.failure_messages()
        result.details = {"exit_code": playbook.returncode, "failed_after_s": took, "messages": messages}
        assert playbook.returncode != 0, f"site.yml installed a damaged model.pt (log {playbook.log})"
        assert messages and messages[0].startswith("install_artifacts: the fetched model.pt (sha256 "), (
            f"the fetch did not name the damaged file (log {playbook.log}):\n{playbook.tail(30)}")
        assert "do not match the digests" in messages[0], messages
        assert installed.read_bytes() == good, "the control node's model.pt changed"
        result.progress_lost_steps = 0
        result.outcome = (f"exit {playbook.returncode} after {took} s: {messages[0][:150]}; the control node kept "
                          "its intact copy")


def nonfinite_checkpoints(host: str, run_dir: str, folder: Path) -> list[str]:
    """The checkpoints of host's run directory (copied here) that fail their digest or hold a
    non-finite value; raises when there is none to look at."""
    from chargpt import checkpoint

    target = folder / host
    subprocess.run(["docker", "cp", f"{host}:{run_dir}/checkpoints", str(target)], check=True, capture_output=True)
    paths = sorted(target.glob("ckpt-*.pt"))
    assert paths, f"{host} kept no checkpoint of the diverged run"
    bad = []
    for path in paths:
        state = checkpoint.load_checkpoint(path)
        values = [*state["model"].values(), *(value for entry in state["optimizer"]["state"].values()
                                              for value in entry.values())]
        if not all(torch.isfinite(value).all() for value in values if value.is_floating_point()):
            bad.append(path.name)
    return bad


def test_a_diverging_learning_rate_stops_the_run_for_good(fault_lab, tmp_path):
    run_id = f"faults-diverged-{fault_lab.session_tag}"
    # A checkpoint every step: the last finite one is there to go back to, none after it may appear.
    # No torchrun restarts: the run's own second failure is what stops it, not torchrun's budget.
    overrides = {"max_steps": 200, "lr": 100, "checkpoint_interval": 1, "log_interval": 1}
    with recording(fault_lab, CaseResult("12c", f"site.yml (trainer_wait) of a run with lr {overrides['lr']}, "
                                                "which diverges", "")) as result:
        playbook, took = deploy(fault_lab, run_vars(run_id, overrides, wait=True,
                                                    settings={"trainer_torchrun_max_restarts": 0}),
                                "faults-diverged")
        run = FaultRun(fault_lab.lab, fault_lab.cluster(), run_id, overrides["max_steps"])
        result.details = {"exit_code": playbook.returncode, "failed_after_s": took}
        assert playbook.returncode != 0, f"site.yml succeeded with a diverging run (log {playbook.log})"
        messages = playbook.failure_messages()
        assert messages and ": chargpt: error: the run diverged: step " in messages[0], (
            f"the trainer's message does not lead site.yml's (log {playbook.log}):\n{playbook.tail(30)}")
        hosts = run.cluster.names
        exits = {host: on_host(host, "docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                               run.container(host)).stdout.split() for host in hosts}
        result.details["containers"] = exits
        assert all(state == ["exited", str(DIVERGED_EXIT)] for state in exits.values()), exits
        for host in hosts:
            record = json.loads(on_host(host, "cat", f"{run_dir_on_hosts(run_id)}/diverged.json").stdout)
            assert record["message"].startswith("the run diverged: step "), f"{host}: {record}"
        bad = {host: nonfinite_checkpoints(host, run_dir_on_hosts(run_id), tmp_path) for host in hosts}
        assert not any(bad.values()), f"checkpoints with non-finite values: {bad}"

        shown = status_command(fault_lab.lab)
        result.details["status_exit_code"] = shown.returncode
        assert shown.returncode == FAILED, f"bin/chargpt-status exited {shown.returncode}:\n{shown.stdout}"
        assert shown.stdout.startswith(f"run {run_id}: failed"), shown.stdout
        assert "the run diverged: step " in shown.stdout, shown.stdout
        result.progress_lost_steps = 0
        result.outcome = (f"exit {playbook.returncode} after {took} s; every trainer exited {DIVERGED_EXIT} and stays "
                          f"stopped; site.yml and bin/chargpt-status show the trainer's line "
                          f"({messages[0][:100] if messages else '-'}); every checkpoint kept is finite and verifies")
