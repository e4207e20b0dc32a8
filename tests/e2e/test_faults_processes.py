"""Fault cases 1-4 (issue 5) and 10b (issue 10): a process or a container hit during a run (kill -9
of a worker's training process, docker kill of its container, rank 0 killed halfway through a
checkpoint, a worker paused past the collective timeout, docker kill of rank 0's container, which
hosts the rendezvous). Each must restart the group, resume from the newest complete checkpoint any
host has and complete; what it cost is recorded for docs/RELIABILITY.md."""

from __future__ import annotations

import re
from datetime import datetime

from .fault_lab import (CHECKPOINT_INTERVAL, CHECKPOINT_PAUSE_S, DIST_TIMEOUT_S, FAULT_OVERRIDES, INJECT_AFTER_STEP,
                        TIMEOUT_MARGIN_S, assert_completed, recording)
from .faults import CaseResult, FaultRun, now, on_host, seconds_between


def assert_resumed_from_newest_checkpoint(run: FaultRun, recovery, summary: dict) -> None:
    assert recovery.resumed_from is not None, (
        f"{run.run_id}: rank 0 never logged 'resumed from step' after the fault; its log ends:\n{run.log_tail()}")
    assert recovery.resumed_from == recovery.newest_checkpoint_before_restart, (
        f"{run.run_id}: resumed from step {recovery.resumed_from}, but the newest checkpoint written before "
        f"the restart was step {recovery.newest_checkpoint_before_restart}")
    assert recovery.first_step_after == recovery.resumed_from + 1, (
        f"{run.run_id}: the first step after resuming from {recovery.resumed_from} was {recovery.first_step_after}")
    assert summary["resumed_from_step"] == recovery.resumed_from, f"{run.run_id}: summary {summary}"


def describe_recovery(recovery, injected_at: datetime) -> dict:
    return {"last_step_before_restart": recovery.last_step_before_restart,
            "newest_checkpoint_before_restart": recovery.newest_checkpoint_before_restart,
            "resumed_from_step": recovery.resumed_from,
            "resume_logged_after_s": seconds_between(injected_at, recovery.resumed_at)}


def record_recovery(result: CaseResult, recovery, injected_at: datetime) -> None:
    result.progress_lost_steps = recovery.progress_lost
    result.recovery_s = seconds_between(injected_at, recovery.first_step_at)
    result.details.update(describe_recovery(recovery, injected_at))


def start_until_injection(fault_lab, name: str, overrides: dict) -> tuple[FaultRun, str]:
    """Start a run and follow it to a step halfway between two checkpoints (INJECT_AFTER_STEP, or the
    first such step the run has not reached when site.yml returns): the run, and the worker that
    the fault hits."""
    run = fault_lab.start(name, overrides)
    reached = run.latest_step()
    target = INJECT_AFTER_STEP
    if reached >= INJECT_AFTER_STEP:
        target = (reached // CHECKPOINT_INTERVAL + 1) * CHECKPOINT_INTERVAL + CHECKPOINT_INTERVAL // 2
    assert target < overrides["max_steps"] - CHECKPOINT_INTERVAL, (
        f"{run.run_id} is at step {reached} of {overrides['max_steps']} when site.yml returned: too late for a fault")
    run.wait_for_step(target)
    return run, run.cluster.names[1]


def test_worker_training_process_killed(fault_lab):
    with recording(fault_lab, CaseResult("1", "kill -9 of a worker's training process mid-run", "")) as result:
        run, worker = start_until_injection(fault_lab, "faults-kill-worker", FAULT_OVERRIDES)
        container_before = run.container_state(worker)
        pid, injected_at = run.signal_training_process(worker, "KILL")
        summary = run.wait_for_summary()
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        assert_completed(run, summary)
        assert_resumed_from_newest_checkpoint(run, recovery, summary)
        container_after = run.container_state(worker)
        result.details["worker_container_restarted"] = container_after["started_at"] != container_before["started_at"]
        result.outcome = (f"torchrun restarted the group{' and the container restarted' if result.details['worker_container_restarted'] else ' inside the running containers'}; "
                          f"resumed from step {recovery.resumed_from}; completed {summary['final_step']} steps")


def kill_container_and_recover(fault_lab, result: CaseResult, name: str, rank: int) -> None:
    """docker kill of the trainer container of the host of node rank `rank`, mid-run: the supervisor
    unit starts the same container again, the group resumes from the newest checkpoint and completes."""
    run, _ = start_until_injection(fault_lab, name, FAULT_OVERRIDES)
    host = run.cluster.names[rank]
    before = run.container_state(host)
    injected_at = now()
    on_host(host, "docker", "kill", run.container(host))
    summary = run.wait_for_summary()
    recovery = run.recovery(injected_at)
    record_recovery(result, recovery, injected_at)
    after = run.container_state(host)
    result.details.update(started_at_before=before["started_at"], started_at_after=after["started_at"])
    assert after["id"] == before["id"], f"{host}: the trainer container was replaced, not started again"
    assert after["started_at"] != before["started_at"], f"{host}: the killed container never started again"
    assert_completed(run, summary)
    assert_resumed_from_newest_checkpoint(run, recovery, summary)
    result.outcome = (f"the container came back (the supervisor unit started it again) and the group formed again; "
                      f"resumed from step {recovery.resumed_from}; completed {summary['final_step']} steps")


def test_worker_container_killed(fault_lab):
    with recording(fault_lab, CaseResult("2", "docker kill of a worker's trainer container mid-run", "")) as result:
        kill_container_and_recover(fault_lab, result, "faults-docker-kill", rank=1)


def test_rank0_container_killed(fault_lab):
    with recording(fault_lab, CaseResult("10b", "docker kill of rank 0's trainer container (it hosts the rendezvous) "
                                                "mid-run", "")) as result:
        kill_container_and_recover(fault_lab, result, "faults-docker-kill-rank0", rank=0)


def test_rank0_killed_while_writing_a_checkpoint(fault_lab):
    torn_step = 2 * CHECKPOINT_INTERVAL
    pause = {"TRAIN_FAULT_CHECKPOINT_PAUSE": f"{torn_step}:{CHECKPOINT_PAUSE_S}"}
    with recording(fault_lab, CaseResult("3", f"kill -9 of rank 0 halfway through writing checkpoint {torn_step}",
                                         "")) as result:
        run = fault_lab.start("faults-kill-rank0-mid-checkpoint", FAULT_OVERRIDES, environment=pause)
        run.wait_for(re.compile(rf"fault injection: pausing .*ckpt-{torn_step:08d}\.pt"), timeout=300)
        files = run.checkpoint_files()
        pid, injected_at = run.signal_training_process(run.master, "KILL")
        result.details["checkpoint_files_at_kill"] = files
        assert f"ckpt-{torn_step:08d}.pt" not in files, f"checkpoint {torn_step} was complete before the kill: {files}"
        assert any(name.startswith(f".ckpt-{torn_step:08d}.pt.") and name.endswith(".tmp") for name in files), (
            f"no half-written temp file of checkpoint {torn_step} at the kill: {files}")
        summary = run.wait_for_summary()
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        assert_completed(run, summary)
        # The worker's host wrote its own copy of that checkpoint in full: the group resumes from it,
        # and rank 0's host receives it.
        assert recovery.resumed_from == torn_step, (
            f"expected a resume from checkpoint {torn_step}, which the worker's host holds; got {recovery}")
        assert summary["resumed_from_step"] == torn_step, f"{run.run_id}: summary {summary}"
        received = [line.text for line in run.rank0_log() if f"received step {torn_step} from rank 1" in line.text]
        assert received, f"rank 0's host never received checkpoint {torn_step}; its log ends:\n{run.log_tail()}"
        warnings = [line.text for line in run.rank0_log() if "unreadable" in line.text]
        result.details["unreadable_checkpoint_warnings"] = warnings
        # The torn write stayed a temp file: no checkpoint the resume read was unreadable.
        assert not warnings, f"{run.run_id}: unreadable checkpoints after a torn write: {warnings}"
        result.outcome = (f"the torn write stayed a temp file on rank 0's host; the worker's host had checkpoint "
                          f"{torn_step} and sent it; completed {summary['final_step']} steps")


def test_worker_paused_past_the_collective_timeout(fault_lab):
    overrides = dict(FAULT_OVERRIDES, dist_timeout_s=DIST_TIMEOUT_S)
    with recording(fault_lab, CaseResult("4", f"SIGSTOP of a worker's training process (dist_timeout_s={DIST_TIMEOUT_S})",
                                         "")) as result:
        run, worker = start_until_injection(fault_lab, "faults-sigstop-worker", overrides)
        pid, injected_at = run.signal_training_process(worker, "STOP")
        try:
            timeout_line, _ = run.wait_for("dist_timeout_s", after=injected_at,
                                           timeout=DIST_TIMEOUT_S + TIMEOUT_MARGIN_S + 60)
            detected_s = seconds_between(injected_at, timeout_line.at)
            result.details.update(timeout_line=timeout_line.text, timeout_reported_after_s=detected_s)
            assert detected_s <= DIST_TIMEOUT_S + TIMEOUT_MARGIN_S, (
                f"rank 0 reported the timeout {detected_s} s after the pause, more than "
                f"dist_timeout_s={DIST_TIMEOUT_S} + {TIMEOUT_MARGIN_S} s")
            # The stopped process is left alone: the restart must get rid of it by itself.
            summary = run.wait_for_summary()
        finally:
            # A process the restart left behind (or a failed test) would stay stopped forever.
            left_behind = on_host(worker, "kill", "-0", str(pid), check=False).returncode == 0
            result.details["stopped_process_left_behind"] = left_behind
            if left_behind:
                on_host(worker, "kill", "-CONT", str(pid), check=False)
        assert not left_behind, f"{worker}: the stopped training process {pid} outlived the restart of its group"
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        assert_completed(run, summary)
        assert_resumed_from_newest_checkpoint(run, recovery, summary)
        result.outcome = (f"rank 0 failed fast {detected_s} s after the pause (\"{timeout_line.text.strip()[:90]}\"); "
                          f"the group restarted, resumed from step {recovery.resumed_from}, completed "
                          f"{summary['final_step']} steps")
