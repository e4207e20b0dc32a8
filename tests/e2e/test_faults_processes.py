"""Fault cases 3, 1, 2 with 12a, 10b, 4, 11a and 11b (issues 5, 10, 24 and 26): a process, a container
or a host hit during a run (rank 0 killed halfway through a checkpoint, kill -9 of a worker's training
process, docker kill of a worker's container just after its newest checkpoint was damaged in place,
docker kill of rank 0's container, which hosts the rendezvous, a worker paused past the collective
timeout, the master's host rebooted, the worker's host cut from its power and booted again). Each
must restart the group with nobody acting and resume from the newest complete checkpoint any host has.

The seven faults hit one run, in this order, each once the run trains again after the one before
and has written a checkpoint of its own: they are independent (a restart leaves nothing behind but
the checkpoints), and one run spares six deployments and six runs to the end. Each case records
its own figures; the last test follows the run to its end and reads its status there. The run's
torchrun restart budget is raised above the role's default, since its torchrun agents see up to
four of these faults between two container restarts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

import pytest

from .fault_lab import (CHECKPOINT_INTERVAL, CHECKPOINT_PAUSE_S, DIST_TIMEOUT_S, FAULT_OVERRIDES, TIMEOUT_MARGIN_S,
                        InOrder, assert_completed, recording)
from .faults import RESUMED_LINE, STEP_LINE, CaseResult, FaultRun, Recovery, now, on_host, seconds_between
from .status import FINISHED, status

# The checkpoint rank 0 is killed in the middle of writing (case 3): late enough that site.yml has
# returned when rank 0 pauses in it, since the worker waits for rank 0 no longer than dist_timeout_s.
TORN_STEP = 3 * CHECKPOINT_INTERVAL
CHAIN_OVERRIDES = dict(FAULT_OVERRIDES, max_steps=800, dist_timeout_s=DIST_TIMEOUT_S)
CHAIN_SETTINGS = {"trainer_torchrun_max_restarts": 8}
CHAIN_CASES = ["3", "1", "2", "10b", "4", "11a", "11b"]


@dataclass
class Chain(InOrder):
    """The run the five faults hit, and where it stands: the step it last resumed from, the cases
    that passed so far, and each one's record (completed by the last test)."""

    ORDER: ClassVar[list[str]] = CHAIN_CASES
    run: FaultRun
    resumed_from: int = 0
    passed: list[str] = field(default_factory=list)
    results: dict[str, CaseResult] = field(default_factory=dict)

    def wait_for_injection_step(self) -> None:
        """Follow the run to a step halfway between two checkpoints, with a checkpoint of this
        attempt before it: the first step 25 after a checkpoint, at least 75 after the resume."""
        reached = self.run.latest_step()
        target = self.resumed_from + CHECKPOINT_INTERVAL + CHECKPOINT_INTERVAL // 2
        while target <= reached:
            target += CHECKPOINT_INTERVAL
        assert target < self.run.max_steps - CHECKPOINT_INTERVAL, (
            f"{self.run.run_id} is at step {reached} of {self.run.max_steps}: too late for another fault")
        self.run.wait_for_step(target)

    def wait_for_recovery(self, result: CaseResult, injected_at: datetime, timeout: float = 300) -> Recovery:
        """Wait until the run trains again after the fault, record the figures, and check that the
        first step after the resume follows it."""
        resumed, _ = self.run.wait_for(RESUMED_LINE, after=injected_at, timeout=timeout)
        self.run.wait_for(STEP_LINE, after=resumed.at, timeout=timeout)
        recovery = self.run.recovery(injected_at)
        result.progress_lost_steps = recovery.progress_lost
        result.recovery_s = seconds_between(injected_at, recovery.first_step_at)
        result.details.update(describe_recovery(recovery, injected_at))
        self.results[result.case] = result
        assert recovery.resumed_from is not None and recovery.first_step_after is not None, (
            f"{self.run.run_id}: rank 0 did not train again after the fault; its log ends:\n{self.run.log_tail()}")
        assert recovery.first_step_after == recovery.resumed_from + 1, (
            f"{self.run.run_id}: the first step after resuming from {recovery.resumed_from} was "
            f"{recovery.first_step_after}")
        self.resumed_from = recovery.resumed_from
        return recovery


def describe_recovery(recovery: Recovery, injected_at: datetime) -> dict:
    return {"last_step_before_restart": recovery.last_step_before_restart,
            "newest_checkpoint_before_restart": recovery.newest_checkpoint_before_restart,
            "resumed_from_step": recovery.resumed_from,
            "resume_logged_after_s": seconds_between(injected_at, recovery.resumed_at)}


def assert_resumed_from_newest_checkpoint(run: FaultRun, recovery: Recovery) -> None:
    assert recovery.resumed_from == recovery.newest_checkpoint_before_restart, (
        f"{run.run_id}: resumed from step {recovery.resumed_from}, but the newest checkpoint written before "
        f"the restart was step {recovery.newest_checkpoint_before_restart}")


@pytest.fixture(scope="module")
def chain(fault_lab) -> Chain:
    pause = {"TRAIN_FAULT_CHECKPOINT_PAUSE": f"{TORN_STEP}:{CHECKPOINT_PAUSE_S}"}
    run = fault_lab.start("faults-processes", CHAIN_OVERRIDES, environment=pause, settings=CHAIN_SETTINGS)
    fault_lab.results.data["session"]["settings"]["process_chain"] = {
        "cases": CHAIN_CASES, "overrides": CHAIN_OVERRIDES, **CHAIN_SETTINGS}
    return Chain(run)


def test_rank0_killed_while_writing_a_checkpoint(fault_lab, chain):
    run = chain.run
    chain.require("3")
    with recording(fault_lab, CaseResult("3", f"kill -9 of rank 0 halfway through writing checkpoint {TORN_STEP}",
                                         "")) as result:
        run.wait_for(re.compile(rf"fault injection: pausing .*ckpt-{TORN_STEP:08d}\.pt"), timeout=300)
        files = run.checkpoint_files()
        pid, injected_at = run.signal_training_process(run.master, "KILL")
        result.details["checkpoint_files_at_kill"] = files
        assert f"ckpt-{TORN_STEP:08d}.pt" not in files, f"checkpoint {TORN_STEP} was complete before the kill: {files}"
        assert any(name.startswith(f".ckpt-{TORN_STEP:08d}.pt.") and name.endswith(".tmp") for name in files), (
            f"no half-written temp file of checkpoint {TORN_STEP} at the kill: {files}")
        recovery = chain.wait_for_recovery(result, injected_at)
        # The worker's host wrote its own copy of that checkpoint in full: the group resumes from it,
        # and rank 0's host receives it.
        assert recovery.resumed_from == TORN_STEP, (
            f"expected a resume from checkpoint {TORN_STEP}, which the worker's host holds; got {recovery}")
        received = [line.text for line in run.rank0_log() if f"received step {TORN_STEP} from rank 1" in line.text]
        assert received, f"rank 0's host never received checkpoint {TORN_STEP}; its log ends:\n{run.log_tail()}"
        warnings = [line.text for line in run.rank0_log() if "is unusable (" in line.text]
        result.details["unreadable_checkpoint_warnings"] = warnings
        # The torn write stayed a temp file: no checkpoint the resume read was unreadable.
        assert not warnings, f"{run.run_id}: unreadable checkpoints after a torn write: {warnings}"
        result.outcome = (f"the torn write stayed a temp file on rank 0's host; the worker's host had checkpoint "
                          f"{TORN_STEP} and sent it; the group resumed from it")
    chain.passed.append("3")


def test_worker_training_process_killed(fault_lab, chain):
    run, worker = chain.run, chain.run.cluster.names[1]
    chain.require("1")
    with recording(fault_lab, CaseResult("1", "kill -9 of a worker's training process mid-run", "")) as result:
        chain.wait_for_injection_step()
        container_before = run.container_state(worker)
        pid, injected_at = run.signal_training_process(worker, "KILL")
        recovery = chain.wait_for_recovery(result, injected_at)
        assert_resumed_from_newest_checkpoint(run, recovery)
        restarted = run.container_state(worker)["started_at"] != container_before["started_at"]
        result.details["worker_container_restarted"] = restarted
        result.outcome = (f"torchrun restarted the group{' and the container restarted' if restarted else ' inside the running containers'}; "
                          f"resumed from step {recovery.resumed_from}")
    chain.passed.append("1")


def kill_container_and_recover(chain: Chain, result: CaseResult, rank: int,
                               before_kill=lambda host: None) -> tuple[Recovery, datetime]:
    """docker kill of the trainer container of the host of node rank `rank`, mid-run: the supervisor
    unit starts the same container again and the group resumes from the newest checkpoint.
    before_kill(host) runs just before the kill."""
    run = chain.run
    chain.wait_for_injection_step()
    host = run.cluster.names[rank]
    before = run.container_state(host)
    before_kill(host)
    injected_at = now()
    on_host(host, "docker", "kill", run.container(host))
    recovery = chain.wait_for_recovery(result, injected_at)
    after = run.container_state(host)
    result.details.update(started_at_before=before["started_at"], started_at_after=after["started_at"])
    assert after["id"] == before["id"], f"{host}: the trainer container was replaced, not started again"
    assert after["started_at"] != before["started_at"], f"{host}: the killed container never started again"
    assert_resumed_from_newest_checkpoint(run, recovery)
    result.outcome = (f"the container came back (the supervisor unit started it again) and the group formed again; "
                      f"resumed from step {recovery.resumed_from}")
    return recovery, injected_at


def test_worker_container_killed_with_its_newest_checkpoint_damaged(fault_lab, chain):
    """Case 2, and 12a on the same restart: just before the kill, the worker's newest checkpoint is
    damaged inside a tensor (size and zip structure kept, so torch.load alone would take it)."""
    run, worker = chain.run, chain.run.cluster.names[1]
    chain.require("2")
    damaged = []
    with recording(fault_lab, CaseResult("2", "docker kill of a worker's trainer container mid-run", "")) as result:
        recovery, injected_at = kill_container_and_recover(
            chain, result, rank=1, before_kill=lambda host: damaged.append(run.damage_newest_checkpoint(host)))
    with recording(fault_lab, CaseResult("12a", "the worker's newest checkpoint damaged in place (one byte inside a "
                                                "tensor) before its trainer restarts", "")) as case:
        [name] = damaged
        step = int(name[5:13])
        case.progress_lost_steps, case.recovery_s = result.progress_lost_steps, result.recovery_s
        case.details = {"damaged": name, "checkpoints_after": run.checkpoint_files(worker)}
        chain.results["12a"] = case
        worker_log = "\n".join(line.text for line in run.host_log(worker) if line.at > injected_at)
        assert recovery.resumed_from == step, f"resumed from {recovery.resumed_from}, not the damaged step {step}"
        assert f"checkpoint {name} of step {step} on " in worker_log, run.log_tail(host=worker)
        assert "is unusable (DamagedCheckpoint: " in worker_log, (
            f"{worker} did not report the damaged {name}; its log ends:\n{run.log_tail(host=worker)}")
        assert f"set aside as {name}.damaged" in worker_log and f"{name}.damaged" in case.details["checkpoints_after"]
        assert f"received step {step} from rank 0, kept as {name}" in worker_log, run.log_tail(host=worker)
        assert name in case.details["checkpoints_after"], case.details
        losses = run.losses()
        # Five steps' mean on each side (a step's loss is noisy); a damaged model would jump far above.
        before = round(sum([loss for line, _, loss in losses if line.at < injected_at][-5:]) / 5, 4)
        after = round(sum([loss for line, logged, loss in losses if line.at > injected_at and logged > step][:5]) / 5, 4)
        case.details.update(loss_before_fault=before, loss_after_resume=after)
        assert after <= before * 1.1, f"the loss after the resume ({after}) is worse than before the fault ({before})"
        case.outcome = (f"{worker} set its damaged {name} aside and said so; rank 0's intact copy of step {step} came "
                        f"over the group and the run resumed from that step (loss {before} before the fault, "
                        f"{after} after)")
    chain.passed.append("2")


def test_rank0_container_killed(fault_lab, chain):
    chain.require("10b")
    with recording(fault_lab, CaseResult("10b", "docker kill of rank 0's trainer container (it hosts the rendezvous) "
                                                "mid-run", "")) as result:
        kill_container_and_recover(chain, result, rank=0)
    chain.passed.append("10b")


def test_worker_paused_past_the_collective_timeout(fault_lab, chain):
    run, worker = chain.run, chain.run.cluster.names[1]
    chain.require("4")
    with recording(fault_lab, CaseResult("4", f"SIGSTOP of a worker's training process (dist_timeout_s={DIST_TIMEOUT_S})",
                                         "")) as result:
        chain.wait_for_injection_step()
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
            recovery = chain.wait_for_recovery(result, injected_at)
        finally:
            # A process the restart left behind (or a failed test) would stay stopped forever.
            left_behind = on_host(worker, "kill", "-0", str(pid), check=False).returncode == 0
            result.details["stopped_process_left_behind"] = left_behind
            if left_behind:
                on_host(worker, "kill", "-CONT", str(pid), check=False)
        assert not left_behind, f"{worker}: the stopped training process {pid} outlived the restart of its group"
        assert_resumed_from_newest_checkpoint(run, recovery)
        result.outcome = (f"rank 0 failed fast {detected_s} s after the pause (\"{timeout_line.text.strip()[:90]}\"); "
                          f"the group restarted and resumed from step {recovery.resumed_from}")
    chain.passed.append("4")


def reboot_and_recover(fault_lab, chain: Chain, result: CaseResult, rank: int, power_loss: bool) -> Recovery:
    """Reboot the host of node rank `rank` mid-run (lab/lab reboot): the engine's start starts the
    supervisor unit, which starts the same trainer container again, and the group resumes."""
    run = chain.run
    chain.wait_for_injection_step()
    host = run.cluster.names[rank]
    before = run.container_state(host)
    injected_at = now()
    fault_lab.lab.reboot(host, power_loss=power_loss)
    result.details["host_back_after_s"] = seconds_between(injected_at, now())
    recovery = chain.wait_for_recovery(result, injected_at)
    after = run.container_state(host)
    result.details.update(started_at_before=before["started_at"], started_at_after=after["started_at"])
    assert after["id"] == before["id"], f"{host}: the trainer container was replaced, not started again"
    assert after["started_at"] != before["started_at"], f"{host}: the trainer never started again after the boot"
    return recovery


def test_master_host_rebooted(fault_lab, chain):
    run = chain.run
    chain.require("11a")
    with recording(fault_lab, CaseResult("11a", "the master's host rebooted mid-run (a clean shutdown and boot)",
                                         "")) as result:
        recovery = reboot_and_recover(fault_lab, chain, result, rank=0, power_loss=False)
        # The shutdown stopped the engine, which stopped the trainer: every host checkpointed the
        # step it was at, so the group resumed from the last step any rank reached.
        assert recovery.progress_lost == 0, (
            f"{run.run_id}: resumed from step {recovery.resumed_from}, but the ranks had reached step "
            f"{recovery.last_step_before_restart} before the shutdown")
        result.outcome = (f"the shutdown checkpointed step {recovery.resumed_from} on every host; after the boot the "
                          f"supervisor unit started the trainer again and the group resumed from that step")
    chain.passed.append("11a")


def test_worker_host_lost_its_power(fault_lab, chain):
    chain.require("11b")
    with recording(fault_lab, CaseResult("11b", "the worker's host cut from its power mid-run, then booted",
                                         "")) as result:
        recovery = reboot_and_recover(fault_lab, chain, result, rank=1, power_loss=True)
        assert_resumed_from_newest_checkpoint(chain.run, recovery)
        result.outcome = (f"after the boot the supervisor unit started the worker's trainer again and the group "
                          f"resumed from step {recovery.resumed_from}")
    chain.passed.append("11b")


def test_the_run_completes_after_every_fault_and_status_shows_it_finished(fault_lab, chain):
    """The run the seven faults hit ends complete, resumed last from the last fault's checkpoint; each
    case's outcome says so, or turns into a failure when it does not. The status of the finished
    run shows every host at the last step and the worker's container restarts."""
    run = chain.run
    if chain.passed != CHAIN_CASES:
        pytest.fail(f"the run's faults did not all pass (passed: {chain.passed}): its end is not measured")
    try:
        summary = run.wait_for_summary()
        assert_completed(run, summary)
        assert summary["resumed_from_step"] == chain.resumed_from, f"{run.run_id}: summary {summary}"
    except AssertionError as error:
        for result in chain.results.values():
            result.passed, result.outcome = False, f"FAILED: the run did not complete after the faults: {error}"
            fault_lab.results.record(result.case, result)
        raise
    for result in chain.results.values():
        result.outcome += f"; the run completed {summary['final_step']} steps after all {len(CHAIN_CASES)} faults"
        fault_lab.results.record(result.case, result)

    hosts = run.cluster.names
    finished = status(fault_lab.lab, hosts, log_name="faults-status-finished")
    assert finished.state == "finished", finished.run.tail(30)
    assert finished.run.returncode == 0
    assert finished.exit_code == FINISHED, finished.command.stdout + finished.command.stderr
    assert finished.command.stdout.splitlines()[0] == f"run {run.run_id}: finished", finished.command.stdout
    assert int(finished.rows[hosts[1]][3]) >= 1, f"the killed worker's restarts: {finished.rows[hosts[1]]}"
    for host in hosts:
        assert finished.rows[host][4] == f"{run.max_steps}/{run.max_steps}", finished.rows[host]
    assert finished.rows[hosts[0]][8].startswith("ckpt-"), f"the master's newest checkpoint: {finished.rows[hosts[0]]}"
