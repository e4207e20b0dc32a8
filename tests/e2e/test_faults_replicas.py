"""Fault cases 10a, 10c and 10d (issue 10): every host keeps the run. A host added to a training run
(with an empty disk) and removed again must lose no step; the master host lost for good, with its
disk, must cost one re-run of site.yml with the edited inventory and at most the steps since the
newest checkpoint, both when it was the only swarm manager and when two of three managers remain.

They run last of the fault cases: 10a adds a third host (case 7 may have added it already), 10c
deletes host 1 for good and 10d adds a fourth."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch
from chargpt.liveness import beat_interval

from harness.inventory import Inventory
from harness.playbook import assert_succeeded
from harness.roles import role_default

from .checks import HOST_CHECKS
from .cluster import Cluster
from .fault_lab import (CHECKPOINT_INTERVAL, FAULT_OVERRIDES, INJECT_AFTER_STEP, SUPERVISOR_WATCH_S, assert_completed,
                        recording, run_vars)
from .faults import CaseResult, FaultRun, now, on_host, seconds_between
from .status import STOPPED, bin_command, status

# Checkpoints kept long enough that the copy a new host received is still there to compare.
REPLICA_OVERRIDES = dict(FAULT_OVERRIDES, keep_checkpoints=20)
# A run that still trains after two playbook runs that change the cluster; bin/chargpt-stop ends it.
ADD_REMOVE_OVERRIDES = dict(REPLICA_OVERRIDES, max_steps=20000, log_interval=10, checkpoint_interval=250,
                            eval_interval=500)
# Where a host's supervisor records a person's docker stop of its trainer.
STOP_RECORD = role_default("trainer", "trainer_supervisor_stop_record")
# Far enough into the run that two checkpoints exist before the master dies.
MASTER_LOSS_AFTER_STEP = 2 * CHECKPOINT_INTERVAL + CHECKPOINT_INTERVAL // 2
# The runs that lose their master: as long as it takes to train on after the loss and checkpoint
# again; the hosts left notice the loss within dead_peer_timeout_s, before the re-run stops them.
DEAD_PEER_TIMEOUT_S = 20
MASTER_LOSS_OVERRIDES = dict(REPLICA_OVERRIDES, max_steps=MASTER_LOSS_AFTER_STEP + 4 * CHECKPOINT_INTERVAL,
                             dead_peer_timeout_s=DEAD_PEER_TIMEOUT_S)
# The trainer's own line (chargpt.liveness), or torchrun's agent failing on the store first (its
# keep-alive to the master's store may break before dead_peer_timeout_s runs out).
DEAD_PEER_LINE = re.compile(r"\[chargpt\] rank \d+: (the group's store .* did not answer|rank \d+ gave no sign of "
                            r"life) for \d+ s|RendezvousConnectionError: The connection to the C10d store has failed")
# How late the line may come: the timeout, two beats, and a margin.
DEAD_PEER_NOTICE_LIMIT_S = DEAD_PEER_TIMEOUT_S + 2 * beat_interval(DEAD_PEER_TIMEOUT_S) + 10


def lab_hosts(lab) -> list[str]:
    inventory = Inventory.read(lab.inventory)
    return inventory.master + inventory.workers


def attempts(run: FaultRun) -> list[dict]:
    return json.loads(on_host(run.master, "cat", f"{run.run_dir}/config.json").stdout)["attempts"]


def assert_no_step_lost(run: FaultRun, world_size: int) -> int:
    """The attempt before the change stopped at a step whose checkpoint the new attempt resumed from."""
    history = attempts(run)
    stopped, resumed = history[-2].get("stopped_at_step"), history[-1]["resumed_from_step"]
    assert stopped is not None, f"{run.run_id}: the attempt before the change did not stop on purpose: {history[-2:]}"
    assert resumed == stopped, f"{run.run_id}: stopped at step {stopped} but resumed from step {resumed}"
    assert history[-1]["world_size"] == world_size, f"{run.run_id}: {history[-1]}"
    return resumed


def fetch_checkpoint(host: str, run_dir: str, step: int, into: Path) -> dict:
    local = into / f"{host}-{step}.pt"
    subprocess.run(["docker", "cp", f"{host}:{run_dir}/checkpoints/ckpt-{step:08d}.pt", str(local)], check=True,
                   capture_output=True)
    return torch.load(local, weights_only=True)


def differences(expected, actual, where: str = "checkpoint") -> list[str]:
    if isinstance(expected, torch.Tensor):
        return [] if isinstance(actual, torch.Tensor) and torch.equal(expected, actual) else [where]
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return [f"{where} (keys)"]
        return [item for key in expected for item in differences(expected[key], actual[key], f"{where}[{key!r}]")]
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(expected) != len(actual):
            return [f"{where} (length)"]
        return [item for index, pair in enumerate(zip(expected, actual))
                for item in differences(*pair, f"{where}[{index}]")]
    return [] if expected == actual else [where]


def first_step_after(run: FaultRun, step: int, since) -> float | None:
    line = run.wait_for_step(step + 1)
    return seconds_between(since, line.at)


def test_hosts_added_and_removed_lose_no_step(fault_lab, tmp_path):
    lab = fault_lab.lab
    if len(lab_hosts(lab)) < 3:
        lab.command("add")
    full = Inventory.read(lab.inventory)
    first, second, joining = (full.master + full.workers)[:3]
    two_hosts = full.without(joining).write(tmp_path / "two-hosts.yml")
    joining_container = Cluster(lab.inventory).trainer_container_name(joining)
    overrides = ADD_REMOVE_OVERRIDES
    with recording(fault_lab, CaseResult("10a", "a third host (empty disk, no engine) added to a training run by "
                                                "site.yml, then removed again, then bin/chargpt-stop",
                                         "")) as result:
        run = fault_lab.start("faults-add-remove", overrides, inventory=two_hosts)
        run.wait_for_step(INJECT_AFTER_STEP)
        started = now()
        # One site.yml gives the new host its engine, its swarm membership and the image, then
        # restarts the group with it: the two hosts train on until the trainer stage.
        added = lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, overrides)),
                             log_name="faults-site-add-host")
        assert_succeeded(added)
        # The image reached the new host from the cluster's registry, over mutual TLS.
        assert f"trainer_image : Pull the image from the registry: {joining}" in added.changed_tasks(), (
            f"{joining} did not pull the image from the cluster's registry (log {added.log})")
        assert "image_registry : Wait until the registry answers over mutual TLS" in added.ran_tasks(), added.log
        resumed = assert_no_step_lost(run, world_size=3)
        result.details.update(added_at_step=resumed, add_recovery_s=first_step_after(run, resumed, started))
        received = on_host(joining, "docker", "logs", joining_container, check=False)
        assert f"received step {resumed} from rank 0" in received.stdout + received.stderr, (
            f"{joining} never logged receiving checkpoint {resumed}")
        master_copy = fetch_checkpoint(first, run.run_dir, resumed, tmp_path)
        joined_copy = fetch_checkpoint(joining, run.run_dir, resumed, tmp_path)
        assert not differences(master_copy, joined_copy), (
            f"{joining}'s copy of checkpoint {resumed} differs: {differences(master_copy, joined_copy)[:5]}")

        started = now()
        assert run.summary() is None, f"{run.run_id} finished before the host was removed: raise max_steps"
        removed = lab.playbook("site.yml", "--tags", "trainer", "-e", json.dumps(run_vars(run.run_id, overrides)),
                               inventory=two_hosts, log_name="faults-site-remove-host")
        assert_succeeded(removed)
        resumed_again = assert_no_step_lost(run, world_size=2)
        result.details.update(removed_at_step=resumed_again,
                              remove_recovery_s=first_step_after(run, resumed_again, started))
        # The host that left still runs the old world's trainer (world size 3), which cannot take a
        # place in the group of 2 nor finish a run.
        stray = json.loads(on_host(joining, "docker", "inspect", "--format", "{{json .State}}",
                                   joining_container).stdout)
        assert stray["Running"] or stray["ExitCode"] != 0, f"the stray trainer on {joining} finished: {stray}"
        on_host(joining, "sh", "-c", f"systemctl stop '*-trainer.service'; docker rm -f {joining_container}",
                check=False)

        # bin/chargpt-stop: every host's trainer at once, each checkpointing the step it is in.
        stop = bin_command("chargpt-stop", lab, "--run-id", run.run_id, inventory=two_hosts)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        result.details["chargpt_stop"] = stop.stdout.splitlines()
        assert stop.stdout.splitlines()[0] == f"run {run.run_id}:", stop.stdout
        for host in (first, second):
            assert any(line.startswith(f"{host}: stopped at step ") and "(exit 143)" in line
                       for line in stop.stdout.splitlines()), f"no line for {host}:\n{stop.stdout}"
        stopped_at = attempts(run)[-1].get("stopped_at_step")
        assert stopped_at is not None, f"bin/chargpt-stop recorded no stop: {attempts(run)[-1]}"
        for host in (first, second):
            assert stopped_at in checkpoint_steps(host, run.run_dir), f"{host} has no checkpoint of step {stopped_at}"
        # The worker's trainer is watched as its supervisor left it; the master's across a reboot.
        with recording(fault_lab, CaseResult("11c", "a run stopped on purpose (bin/chargpt-stop), then the "
                                                    "master's host rebooted", "")) as rebooted:
            rebooted_at = now()
            lab.reboot(first)
            rebooted.details["host_back_after_s"] = seconds_between(rebooted_at, now())
            time.sleep(SUPERVISOR_WATCH_S)
            states = {host: run.container_state(host)["status"] for host in (first, second)}
            codes = {host: on_host(host, "docker", "inspect", "--format", "{{.State.ExitCode}}",
                                   run.container(host)).stdout.strip() for host in (first, second)}
            records = {host: on_host(host, "cat", STOP_RECORD, check=False).stdout.strip() for host in (first, second)}
            result.details.update(stop_at_step=stopped_at, exit_codes_after_stop=codes)
            rebooted.details.update(exit_codes=codes, stop_records=records)
            assert states == {first: "exited", second: "exited"} and set(codes.values()) == {"143"}, (
                f"after bin/chargpt-stop (and a reboot of {first}) the trainers are {states} with exit codes {codes}: "
                f"expected exited, 143, left stopped")
            # The supervisor, which watched the container, wrote it over bin/chargpt-stop's record.
            assert all("stopped on request (exit 143)" in record for record in records.values()), (
                f"the supervisors' records of the stop ({STOP_RECORD}): {records}")
            stopped = status(lab, [first, second], log_name="faults-status-stopped", inventory=two_hosts)
            result.details["status_after_stop"] = [stopped.state, stopped.exit_code]
            assert (stopped.run_id, stopped.state) == (run.run_id, "stopped"), stopped.run.tail(30)
            assert stopped.exit_code == STOPPED, stopped.command.stdout + stopped.command.stderr
            assert stopped.step(first) == stopped_at, stopped.rows
            # A stop on request is no error: no host's error line under the table.
            errors = [line for line in stopped.command.stdout.splitlines() if line.startswith((f"{first}:", f"{second}:"))]
            assert not errors, f"bin/chargpt-status shows error lines for a stopped run: {errors}"
            rebooted.progress_lost_steps = 0
            rebooted.outcome = (f"each supervisor recorded the stop; after {first} booted its trainer stayed "
                                f"stopped at step {stopped_at} (watched {SUPERVISOR_WATCH_S} s), status 'stopped'")
        # --cancel on the stopped run: the supervisors stop and no longer start with the engine, no
        # process of the run is left, the checkpoints stay; a run id that is not the hosts' is refused.
        cancel = bin_command("chargpt-stop", lab, "--cancel", inventory=two_hosts)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        for host in (first, second):
            assert any(line.startswith(f"{host}: already stopped and cancelled") for line in cancel.stdout.splitlines()), (
                cancel.stdout)
            unit = on_host(host, "sh", "-c", "systemctl is-active '*-trainer.service'; "
                                             "systemctl is-enabled '*-trainer.service'", check=False).stdout.split()
            assert unit[:1] != ["active"] and "enabled" not in unit, f"{host}'s supervisor after --cancel: {unit}"
            assert run.container_state(host)["status"] == "exited", run.container_state(host)
            assert stopped_at in checkpoint_steps(host, run.run_dir), f"--cancel took {host}'s checkpoint {stopped_at}"
        refused = bin_command("chargpt-stop", lab, "--run-id", "no-such-run", inventory=two_hosts)
        assert refused.returncode == 1 and "Run no-such-run is not running on any host" in refused.stderr, (
            refused.stdout + refused.stderr)
        result.details["chargpt_stop_cancel"] = cancel.stdout.splitlines()
        # The host that joined is a host of the cluster like the others (checked once the trainers
        # stopped, so that the checks do not compete with a run for the two cores).
        three_hosts = Cluster(lab.inventory)
        for check in HOST_CHECKS:
            check(three_hosts)
        result.progress_lost_steps = 0
        result.recovery_s = result.details["add_recovery_s"]
        result.outcome = (f"added at step {resumed}: every host checkpointed it, {joining} received it (its copy "
                          f"matches the master's) and the group of 3 resumed from it; removed at step "
                          f"{resumed_again}, resumed at world size 2 from that step; bin/chargpt-stop at step "
                          f"{stopped_at}: checkpointed on both hosts, exit 143, left stopped; status 'stopped', "
                          f"exit {STOPPED}; --cancel stopped the supervisors, checkpoints kept; another run id "
                          f"refused")


def checkpoint_steps(host: str, run_dir: str) -> list[int]:
    names = on_host(host, "ls", f"{run_dir}/checkpoints", check=False).stdout.split()
    return sorted(int(name[5:13]) for name in names if name.startswith("ckpt-") and name.endswith(".pt"))


def progress_step(host: str, run_dir: str) -> int:
    """The last step host's first training process logged (its progress file: every step is logged)."""
    return json.loads(on_host(host, "cat", f"{run_dir}/progress.json").stdout)["step"]


def join_tokens(manager: str) -> dict[str, str]:
    """The swarm's current join tokens, read on a manager (they stay in this test)."""
    return {role: on_host(manager, "docker", "swarm", "join-token", "--quiet", role).stdout.strip()
            for role in ("worker", "manager")}


def swarm_cluster_id(host: str) -> str:
    return on_host(host, "docker", "info", "--format", "{{.Swarm.Cluster.ID}}").stdout.strip()


def lose_the_master(fault_lab, tmp_path, result: CaseResult, name: str, inventory: Inventory,
                    provision: bool = False, notice: bool = False) -> dict:
    """Start a run on inventory's hosts (provision: with every stage of site.yml), delete the
    master's host and disk for good after two checkpoints, (notice: wait until the next host's
    trainer says that its group lost a peer,) re-run site.yml once with the next host as master and
    first manager, and follow the run to its end. Returns what the case measured."""
    lab = fault_lab.lab
    hosts = inventory.master + inventory.workers
    lost, new_master = hosts[0], hosts[1]
    run = fault_lab.start(name, MASTER_LOSS_OVERRIDES, inventory=inventory.write(tmp_path / "before.yml"),
                          every_stage=provision)
    # The deployment that started the run forgot 11c's record of a person's stop.
    kept = [host for host in hosts if on_host(host, "test", "-e", STOP_RECORD, check=False).returncode == 0]
    assert not kept, f"{STOP_RECORD} is still on {kept} after site.yml started {run.run_id}"
    run.wait_for_step(MASTER_LOSS_AFTER_STEP)
    run_dir = run.run_dir
    # What rank 0 had logged just before the loss, for comparison only: the run goes on while the
    # host is being removed.
    logged_before = run.latest_step()
    injected_at = now()
    lab.command("remove", lost.rsplit("-", 1)[1])
    # Read after the loss: the step the hosts left reached (a rank cannot get a step ahead of the
    # group) and the checkpoints they hold.
    reached = {host: progress_step(host, run_dir) for host in hosts[1:]}
    last_step = max(reached.values())
    survivors = {host: checkpoint_steps(host, run_dir) for host in hosts[1:]}
    newest = max(step for steps in survivors.values() for step in steps)
    if notice:
        noticed, _ = run.wait_for(DEAD_PEER_LINE, after=injected_at, timeout=DEAD_PEER_NOTICE_LIMIT_S, host=new_master)
        result.details.update(dead_peer_line=noticed.text,
                              dead_peer_noticed_after_s=seconds_between(injected_at, noticed.at))
    after = replace(inventory.without(lost), master=[new_master], workers=hosts[2:],
                    managers=[new_master] + [host for host in inventory.managers if host not in (lost, new_master)])
    started = time.monotonic()
    rerun = lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, MASTER_LOSS_OVERRIDES)),
                         inventory=after.write(tmp_path / "after.yml"), log_name=f"faults-site-{name}")
    rerun_s = round(time.monotonic() - started, 1)
    assert_succeeded(rerun)
    moved = FaultRun(lab, Cluster(tmp_path / "after.yml"), run.run_id, run.max_steps)
    summary = moved.wait_for_summary()
    assert_completed(moved, summary, world_size=len(hosts) - 1)
    assert summary["resumed_from_step"] == newest, (
        f"resumed from step {summary['resumed_from_step']}, but the newest checkpoint on the hosts left was {newest}")
    result.progress_lost_steps = last_step - newest
    assert result.progress_lost_steps <= CHECKPOINT_INTERVAL, result.progress_lost_steps
    first_step = moved.wait_for_step(newest + 1)
    result.recovery_s = seconds_between(injected_at, first_step.at)
    result.details.update(lost_host=lost, new_master=new_master, rank0_logged_before_the_loss=logged_before,
                          steps_reached_by_the_hosts_left=reached,
                          survivors_checkpoints=survivors, resumed_from_step=newest, rerun_s=rerun_s)
    return {"moved": moved, "summary": summary, "new_master": new_master, "newest": newest, "lost": lost}


def test_master_host_lost_for_good_when_it_was_the_only_manager(fault_lab, tmp_path):
    inventory = Inventory.read(fault_lab.lab.inventory)
    hosts = inventory.master + inventory.workers
    assert len(hosts) >= 3 and inventory.managers == hosts[:1], f"expected 3 hosts, one manager: {inventory}"
    with recording(fault_lab, CaseResult("10c", "the master host (the only swarm manager) deleted with its disk "
                                                "mid-run; one site.yml with the edited inventory", "")) as result:
        old_swarm = swarm_cluster_id(hosts[0])  # a worker's engine does not know the swarm's ID
        measured = lose_the_master(fault_lab, tmp_path, result, "faults-master-lost", replace(
            inventory, master=hosts[:1], workers=hosts[1:3]))
        new_swarm = swarm_cluster_id(measured["new_master"])
        result.details.update(swarm_before=old_swarm, swarm_after=new_swarm)
        assert new_swarm and new_swarm != old_swarm, "the orphaned swarm was not replaced"
        result.outcome = (f"site.yml re-formed the swarm on {measured['new_master']} (the old one had no manager "
                          f"left) and the trainers resumed at world size 2 from step {measured['newest']}, the "
                          f"newest checkpoint on the hosts left; completed {measured['summary']['final_step']} steps")


def test_master_host_lost_for_good_with_three_managers(fault_lab, tmp_path):
    lab = fault_lab.lab
    lab.command("add")  # the hosts are now 2, 3 and 4 (host 1 is gone); host 2 is the master
    inventory = Inventory.read(lab.inventory)
    hosts = inventory.master + inventory.workers
    three_managers = replace(inventory, managers=hosts[:3])
    with recording(fault_lab, CaseResult("10d", "the master host (one of three swarm managers) deleted with its disk "
                                                "mid-run; one site.yml with the edited inventory", "")) as result:
        old_swarm = swarm_cluster_id(hosts[0])  # the first manager since 10c
        # The run's own site.yml provisions the new host and makes three managers of one swarm.
        measured = lose_the_master(fault_lab, tmp_path, result, "faults-master-lost-quorum", three_managers,
                                   provision=True, notice=True)
        new_swarm = swarm_cluster_id(measured["new_master"])
        result.details.update(swarm_before=old_swarm, swarm_after=new_swarm)
        assert new_swarm == old_swarm, "the swarm kept its quorum but was replaced"
        # The dead manager's node stays listed (down) until teardown prunes it: demoted, then removed;
        # then no join token a removed host may have kept works any more.
        tokens_before = join_tokens(measured["new_master"])
        pruned = fault_lab.lab.playbook("playbooks/teardown.yml", "--tags", "swarm",
                                        inventory=tmp_path / "after.yml", log_name="faults-teardown-prune-lost-manager")
        assert_succeeded(pruned)
        nodes = on_host(measured["new_master"], "docker", "node", "ls", "--format", "{{.Hostname}}").stdout.split()
        result.details["swarm_nodes_after_prune"] = nodes
        assert measured["lost"] not in nodes, f"the lost manager's node is still in the swarm: {nodes}"
        tokens_after = join_tokens(measured["new_master"])
        assert all(tokens_after[role] != tokens_before[role] for role in tokens_before), (
            "the join tokens were not rotated after a node was removed")
        result.outcome = (f"{measured['new_master']}'s trainer noticed the loss after "
                          f"{result.details['dead_peer_noticed_after_s']} s (dead_peer_timeout_s={DEAD_PEER_TIMEOUT_S}); "
                          f"the swarm kept its quorum (2 of 3 managers) and its ID; {measured['new_master']} took "
                          f"over as master, the trainers resumed at world size 2 from step {measured['newest']}; "
                          f"completed {measured['summary']['final_step']} steps")
