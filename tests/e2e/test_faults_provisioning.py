"""One long run, and what happens around it while it trains: the status of the run (issue 12),
deployments that must leave it alone (issue 5: a full site.yml re-run, case 5, and a new third host
that freezes once the Docker stage starts, case 7) or must be refused (issue 11: another run id,
case 8e, and another corpus under its own run id, case 8b), and a worker's container killed.

The run never needs to finish: what the cases prove is that it went on training, in the same
containers and without a restart, through every deployment that had to leave it alone. The tests run
in this order on the same run; case 7 adds a host to the fault lab, so they run after every case
that needs two hosts and before the replica cases (test_faults_replicas.py) that use the third."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar

import pytest

from harness.inventory import Inventory
from harness.playbook import assert_nothing_changed
from harness.roles import role_default

from .cluster import WORLD_SIZE_LABEL, Cluster
from .fault_lab import (LONG_OVERRIDES, InOrder, assert_refused_another_corpus, changed_corpus, deploy, recording,
                        run_vars, stop_trainers)
from .faults import RESUMED_LINE, STEP_LINE, CaseResult, FaultRun, on_host, snapshot, snapshot_differences
from .lab import timed
from .status import LOGS_LINE, RUNNING, bin_command, status

# Never finishes while the tests run (about 25 steps a second while playbooks take the CPU).
OVERRIDES = dict(LONG_OVERRIDES, max_steps=20000, checkpoint_interval=250)
LONG_RUN_STEPS = ["status", "8e", "5", "7", "killed", "8b"]

@dataclass
class LongRun(InOrder):
    ORDER: ClassVar[list[str]] = LONG_RUN_STEPS
    run: FaultRun
    hosts: list[str]
    two_hosts: Inventory
    containers: dict[str, dict] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)

    def assert_untouched(self) -> None:
        """The same containers, never restarted, and no resume in rank 0's log since the start."""
        after = {host: self.run.container_state(host) for host in self.hosts}
        assert after == self.containers, f"the trainer containers changed: before {self.containers}, after {after}"
        resumes = [line.text for line in self.run.rank0_log() if RESUMED_LINE.search(line.text)]
        assert not resumes, f"{self.run.run_id} restarted: {resumes}"
        assert self.run.summary() is None, f"{self.run.run_id} finished: raise OVERRIDES' max_steps"


@pytest.fixture(scope="module")
def long_run(fault_lab) -> LongRun:
    run = fault_lab.start("faults-long-run", OVERRIDES)
    hosts = run.cluster.names
    two_hosts = Inventory.read(fault_lab.lab.inventory)
    assert two_hosts.master + two_hosts.workers == hosts, f"expected the two hosts {hosts}: {two_hosts}"
    return LongRun(run, hosts, two_hosts)


def test_status_follows_the_run_while_it_trains(fault_lab, long_run, tmp_path):
    run, hosts = long_run.run, long_run.hosts
    first = status(fault_lab.lab, hosts, log_name="faults-status-training-1")
    time.sleep(3)
    second = status(fault_lab.lab, hosts, log_name="faults-status-training-2")
    assert (first.run_id, first.state, second.state) == (run.run_id, "training", "training"), second.run.tail(30)
    for host in hosts:
        assert first.rows[host][2] == "running", first.rows[host]
        assert second.step(host) > first.step(host), f"{host}: {first.rows[host]} then {second.rows[host]}"
    assert first.run.returncode == 0, first.run.tail(30)
    assert (first.exit_code, second.exit_code) == (RUNNING, RUNNING), first.command.stderr + second.command.stdout
    long_run.containers = {host: run.container_state(host) for host in hosts}
    # Every host's log in one place, in time order, each line with its host and node rank.
    logs = timed("faults-logs-command", bin_command, "chargpt-logs", fault_lab.lab, "--tail", "100")
    assert logs.returncode == 0, logs.stdout[-2000:] + logs.stderr
    shown = [LOGS_LINE.fullmatch(line) for line in logs.stdout.splitlines()]
    assert shown and all(shown), f"bin/chargpt-logs printed lines of another shape:\n{logs.stdout[:2000]}"
    assert [line["at"] for line in shown] == sorted(line["at"] for line in shown), logs.stdout[:2000]
    assert {line["host"]: int(line["rank"]) for line in shown} == {host: rank for rank, host in enumerate(hosts)}
    assert any(line["rank"] == "0" and STEP_LINE.search(line["text"]) for line in shown), logs.stdout[-2000:]
    # A host that cannot be reached (no SSH server where the inventory says) is named; the others still show.
    ghost = "e2e-host-unreachable"
    with_ghost = replace(long_run.two_hosts, workers=[*long_run.two_hosts.workers, ghost]).with_host_var(
        ghost, "ansible_host", "127.0.0.1").with_host_var(ghost, "ansible_port", 1)
    partial = timed("faults-logs-unreachable-host", bin_command, "chargpt-logs", fault_lab.lab, "--tail", "5",
                    inventory=with_ghost.write(tmp_path / "with-unreachable.yml"))
    assert partial.returncode == 4, partial.stdout[-2000:] + partial.stderr
    assert f"chargpt-logs: {ghost}: not read: could not be reached" in partial.stderr, partial.stderr
    read = {match["host"] for match in map(LOGS_LINE.fullmatch, partial.stdout.splitlines()) if match}
    assert read == set(hosts), f"bin/chargpt-logs showed {read} with {ghost} unreachable:\n{partial.stdout[:2000]}"
    long_run.passed.append("status")


def test_another_run_id_stops_in_preflight_while_a_run_trains(fault_lab, long_run):
    run, hosts = long_run.run, long_run.hosts
    long_run.require("8e")
    with recording(fault_lab, CaseResult("8e", "site.yml of another run id while a run trains", "")) as result:
        before = snapshot(hosts)
        other = run_vars(f"faults-other-{fault_lab.session_tag}", {"max_steps": 20})
        playbook, took = deploy(fault_lab, other, "faults-other-run-id")
        result.details = {"exit_code": playbook.returncode, "failed_after_s": took}
        assert playbook.returncode != 0, f"site.yml replaced a running run (log {playbook.log})"
        assert f"The run {run.run_id} still trains on" in playbook.text, playbook.tail(30)
        assert "trainer_replace_running: true" in playbook.text, playbook.tail(30)
        assert "PLAY [Put the trainer on every host" not in playbook.output, "site.yml went past the preflight"
        # The running run writes its own directory meanwhile (on every host: its progress file);
        # everything else must stay as it was.
        differences = [line for line in snapshot_differences(before, snapshot(hosts))
                       if f"/{run.run_id}/" not in line and f"/{run.run_id} " not in line]
        assert not differences, "the refused deployment changed the hosts:\n" + "\n".join(differences[:40])
        long_run.assert_untouched()
        result.progress_lost_steps = 0
        result.outcome = f"exit {playbook.returncode} after {took} s in preflight, naming {run.run_id}; no host changed"
    long_run.passed.append("8e")


def test_rerun_mid_run_changes_nothing(fault_lab, long_run):
    run = long_run.run
    long_run.require("5")
    with recording(fault_lab, CaseResult("5", "site.yml re-run (all stages) during a healthy run", "")) as result:
        started = time.monotonic()
        rerun = fault_lab.lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, OVERRIDES)),
                                       log_name="faults-site-rerun-mid-run")
        rerun_s = round(time.monotonic() - started, 1)
        step_at_end = run.latest_step()
        result.details = {"rerun_s": rerun_s, "changed": rerun.changed_hosts(), "step_when_rerun_ended": step_at_end}
        assert_nothing_changed(rerun)
        long_run.assert_untouched()
        run.wait_for_step(step_at_end + 20)
        result.progress_lost_steps = 0
        result.outcome = (f"changed=0 on every host; containers not restarted (same ID, StartedAt, restart count); "
                          f"the run went on without a resume (step {step_at_end} when the re-run ended)")
    long_run.passed.append("5")


def compose_file() -> str:
    """Where the trainer role renders a host's compose file."""
    return f"{role_default('trainer', 'trainer_compose_dir')}/compose.yml"


def compose_files(hosts: list[str]) -> dict[str, str]:
    return {host: on_host(host, "sh", "-c", f"cat {compose_file()} 2>/dev/null || true").stdout for host in hosts}


def test_host_unreachable_during_provisioning(fault_lab, long_run):
    """A third host is added, then frozen (docker pause) once the Docker stage starts: site.yml must
    fail, leave no compose file for a world of three, and leave the running trainers alone."""
    lab, run, hosts = fault_lab.lab, long_run.run, long_run.hosts
    long_run.require("7")
    with recording(fault_lab, CaseResult("7", "a new third host frozen (docker pause) while site.yml provisions it",
                                         "")) as result:
        composes = compose_files(hosts)
        lab.command("add")
        new_host = [name for name in Cluster(lab.inventory).names if name not in hosts]
        assert len(new_host) == 1, f"lab/lab add gave {new_host}"
        new_host = new_host[0]
        started = time.monotonic()
        paused_at = None

        def pause_at_docker_stage(line: str) -> None:
            nonlocal paused_at
            if paused_at is None and line.startswith("PLAY [Install the Docker engine"):
                subprocess.run(["docker", "pause", new_host], check=True, capture_output=True)
                paused_at = time.monotonic()

        try:
            provision = lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, OVERRIDES)),
                                     log_name="faults-site-unreachable", on_line=pause_at_docker_stage)
        finally:
            failed_after = round(time.monotonic() - (paused_at or started), 1)
            subprocess.run(["docker", "unpause", new_host], capture_output=True)
        returncode, text, log = provision.returncode, provision.output, provision.log
        assert paused_at is not None, f"site.yml never reached the Docker stage (log {log})"
        result.details.update(exit_code=returncode, failed_after_pause_s=failed_after)
        assert returncode != 0, f"site.yml succeeded with {new_host} frozen (log {log})"
        assert re.search(rf"{re.escape(new_host)}.*UNREACHABLE", text), f"{new_host} was not reported unreachable ({log})"
        advice = f"{new_host} (a worker) could not be reached. Bring it back (its power, network and SSH)"
        assert advice in text, f"site.yml did not say what to do about {new_host} ({log})"
        guarded = "dropped out of this play" in text
        result.details["stopped_by"] = ("the trainer stage's guard (no compose file for a host that dropped out)"
                                        if guarded else "any_errors_fatal: no play ran a task after the host dropped out")
        assert guarded or "TASK [trainer : Render this host's compose file]" not in text, (
            f"the trainer stage rendered compose files without noticing that {new_host} is gone ({log})")
        assert compose_files(hosts) == composes, "a compose file changed on the hosts that stayed"
        leftover = on_host(new_host, "sh", "-c", f"ls {compose_file()} 2>/dev/null || true").stdout
        assert not leftover.strip(), f"{new_host} got a compose file"
        assert all(f'{WORLD_SIZE_LABEL}: "2"' in content for content in composes.values()), composes
        long_run.assert_untouched()
        step = run.latest_step()
        run.wait_for_step(step + 20)
        progress = json.loads(on_host(run.master, "cat", f"{run.run_dir}/progress.json").stdout)
        assert (progress["state"], progress["world_size"]) == ("training", 2), progress
        result.progress_lost_steps = 0
        result.outcome = (f"exit {returncode} {failed_after} s after the host froze; no compose file for 3 hosts "
                          f"anywhere; the trainers untouched, the run trained on at world size 2 without a resume "
                          f"(step {progress['step']})")
    long_run.passed.append("7")


def test_status_shows_a_killed_worker_recovering(fault_lab, long_run, tmp_path):
    run, hosts = long_run.run, long_run.hosts
    worker = hosts[1]
    long_run.require("killed")
    on_host(worker, "docker", "kill", run.container(worker))
    killed = status(fault_lab.lab, hosts, log_name="faults-status-killed",
                    inventory=long_run.two_hosts.write(tmp_path / "two-hosts.yml"))
    restarts = int(killed.rows[worker][3])
    assert killed.state == "recovering" or restarts >= 1, (
        f"after docker kill of {worker}'s trainer: state {killed.state}, its row {killed.rows[worker]}")
    assert killed.run.returncode == 0, killed.run.tail(30)
    assert killed.exit_code == RUNNING, killed.command.stdout + killed.command.stderr
    long_run.passed.append("killed")


def test_another_corpus_is_refused_while_the_run_trains(fault_lab, long_run, tmp_path):
    run = long_run.run
    long_run.require("8b")
    inventory = long_run.two_hosts.write(tmp_path / "two-hosts.yml")
    try:
        # The killed worker's container is back and the group trains again.
        resumed, _ = run.wait_for(RESUMED_LINE, timeout=300)
        run.wait_for(STEP_LINE, after=resumed.at)
        with recording(fault_lab, CaseResult("8b", "the same run id with another corpus while it trains", "")) as result:
            changed = dict(run_vars(run.run_id, OVERRIDES), trainer_corpus_path=changed_corpus(tmp_path))
            playbook, took = deploy(fault_lab, changed, "faults-corpus-change-running", inventory=inventory)
            result.details = {"exit_code": playbook.returncode, "failed_after_s": took}
            assert playbook.returncode != 0, f"site.yml accepted another corpus for {run.run_id} (log {playbook.log})"
            assert_refused_another_corpus(playbook, run.run_id, changed["trainer_corpus_path"])
            messages = playbook.failure_messages()
            result.progress_lost_steps = 0
            result.outcome = f"exit {playbook.returncode} after {took} s: {messages[0][:160] if messages else '-'}"
    finally:
        stop_trainers(fault_lab, inventory=inventory)
    long_run.passed.append("8b")
