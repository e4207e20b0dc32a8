"""Fault cases 5 and 7 (issue 5): site.yml while a run trains. Re-run in full mid-run, it must
change nothing and leave the trainers alone; run with a new third host that freezes once the Docker
stage starts, it must fail without rendering a compose file for three hosts anywhere and leave the
run at world size 2 alone. Case 7 adds a host to the fault lab: it runs last of the fault cases."""

from __future__ import annotations

import json
import re
import subprocess
import time

from harness.playbook import assert_nothing_changed, assert_succeeded
from harness.roles import role_default

from .cluster import WORLD_SIZE_LABEL, Cluster
from .fault_lab import LONG_OVERRIDES, assert_completed, recording, run_vars
from .faults import CaseResult, on_host


# The whole re-run must fit in the run: about 25 steps a second here while the re-run takes the CPU.
RERUN_OVERRIDES = dict(LONG_OVERRIDES, max_steps=4000)


def test_rerun_mid_run_changes_nothing(fault_lab):
    with recording(fault_lab, CaseResult("5", "site.yml re-run (all stages) during a healthy run", "")) as result:
        run = fault_lab.start("faults-rerun", RERUN_OVERRIDES)
        run.wait_for_step(100)
        run.yield_cpu()
        states = {host: run.container_state(host) for host in run.cluster.names}
        started = time.monotonic()
        rerun = fault_lab.lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, RERUN_OVERRIDES)),
                                       log_name="faults-site-rerun-mid-run")
        rerun_s = round(time.monotonic() - started, 1)
        assert_succeeded(rerun)
        assert run.summary() is None, (
            f"{run.run_id} finished before the re-run of site.yml did; raise RERUN_OVERRIDES' max_steps")
        step_at_end = max(int(m[1]) for line in run.rank0_log() if (m := re.search(r"step (\d+)/", line.text)))
        changed = rerun.changed_hosts()
        result.details = {"rerun_s": rerun_s, "changed": changed,
                          "step_when_rerun_ended": step_at_end}
        assert_nothing_changed(rerun)
        after = {host: run.container_state(host) for host in run.cluster.names}
        assert after == states, f"the re-run touched the trainer containers: before {states}, after {after}"
        summary = run.wait_for_summary()
        assert_completed(run, summary)
        assert summary["resumed_from_step"] is None, f"the run restarted: {summary}"
        assert not [line for line in run.rank0_log() if "resumed from step" in line.text], "rank 0 logged a resume"
        result.progress_lost_steps = 0
        result.outcome = (f"changed=0 on every host; containers not restarted (same ID, StartedAt, restart count); "
                          f"the run went on (step {step_at_end} when the re-run ended) and completed "
                          f"{summary['final_step']} steps without a resume")


def compose_file() -> str:
    """Where the trainer role renders a host's compose file."""
    return f"{role_default('trainer', 'trainer_compose_dir')}/compose.yml"


def compose_files(hosts: list[str]) -> dict[str, str]:
    return {host: on_host(host, "sh", "-c", f"cat {compose_file()} 2>/dev/null || true").stdout for host in hosts}


def test_host_unreachable_during_provisioning(fault_lab):
    """A third host is added, then frozen (docker pause) once the Docker stage starts: site.yml must
    fail, leave no compose file for a world of three, and leave the running trainers alone."""
    lab = fault_lab.lab
    with recording(fault_lab, CaseResult("7", "a new third host frozen (docker pause) while site.yml provisions it",
                                         "")) as result:
        run = fault_lab.start("faults-unreachable", LONG_OVERRIDES)
        run.wait_for_step(100)
        run.yield_cpu()
        hosts = run.cluster.names
        states = {host: run.container_state(host) for host in hosts}
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
            provision = lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, LONG_OVERRIDES)),
                                     log_name="faults-site-unreachable", on_line=pause_at_docker_stage)
        finally:
            failed_after = round(time.monotonic() - (paused_at or started), 1)
            subprocess.run(["docker", "unpause", new_host], capture_output=True)
        returncode, text, log = provision.returncode, provision.output, provision.log
        assert paused_at is not None, f"site.yml never reached the Docker stage (log {log})"
        result.details.update(exit_code=returncode, failed_after_pause_s=failed_after)
        assert returncode != 0, f"site.yml succeeded with {new_host} frozen (log {log})"
        assert re.search(rf"{re.escape(new_host)}.*UNREACHABLE", text), f"{new_host} was not reported unreachable ({log})"
        guarded = "dropped out of this play" in text
        result.details["stopped_by"] = ("the trainer stage's guard (no compose file for a host that dropped out)"
                                        if guarded else "any_errors_fatal: no play ran a task after the host dropped out")
        assert guarded or "TASK [trainer : Render this host's compose file]" not in text, (
            f"the trainer stage rendered compose files without noticing that {new_host} is gone ({log})")
        assert compose_files(hosts) == composes, "a compose file changed on the hosts that stayed"
        leftover = on_host(new_host, "sh", "-c", f"ls {compose_file()} 2>/dev/null || true").stdout
        assert not leftover.strip(), f"{new_host} got a compose file"
        assert all(f'{WORLD_SIZE_LABEL}: "2"' in content for content in composes.values()), composes
        after = {host: run.container_state(host) for host in hosts}
        # The same containers, never restarted; the run may have finished meanwhile (exited, checked below).
        assert {host: dict(state, status=None) for host, state in after.items()} == \
            {host: dict(state, status=None) for host, state in states.items()}, (
            f"the failed run touched the trainers: before {states}, after {after}")
        summary = run.wait_for_summary()
        assert_completed(run, summary, world_size=2)
        assert summary["resumed_from_step"] is None, f"the run restarted: {summary}"
        result.progress_lost_steps = 0
        result.outcome = (f"exit {returncode} {failed_after} s after the host froze; no compose file for 3 hosts "
                          f"anywhere; the trainers untouched, the run completed {summary['final_step']} steps at "
                          f"world size 2")
