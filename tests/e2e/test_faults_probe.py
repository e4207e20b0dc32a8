"""On the fault lab's two hosts: playbooks/status.yml and bin/chargpt-status's exit status on a run
while it trains, after a worker's container was killed, and once it finished (the failed run is
case 8a's, in test_faults_identity.py); and the network probe stopping a deployment whose network is below its
limits. The file's name puts it after the process faults and before the provisioning cases."""

from __future__ import annotations

import json
import re
import time

from .cluster import RUN_ID_LABEL
from .fault_lab import FAULT_OVERRIDES, assert_completed, run_vars
from .faults import on_host
from .status import FINISHED, RUNNING, status

# Long enough to read the run twice while it trains (each read runs the playbook and then
# bin/chargpt-status: about 10-25 s on this machine), kill a container and see it back.
OVERRIDES = dict(FAULT_OVERRIDES, max_steps=4000, log_interval=10, checkpoint_interval=500, eval_interval=500)


def test_status_follows_a_run_through_a_killed_container_to_its_end(fault_lab):
    run = fault_lab.start("faults-status", OVERRIDES)
    hosts = run.cluster.names
    worker = hosts[1]

    first = status(fault_lab.lab, hosts, log_name="faults-status-training-1")
    time.sleep(3)
    second = status(fault_lab.lab, hosts, log_name="faults-status-training-2")
    assert (first.run_id, first.state, second.state) == (run.run_id, "training", "training"), second.run.tail(30)
    for host in hosts:
        assert first.rows[host][2] == "running", first.rows[host]
        assert second.step(host) > first.step(host), f"{host}: {first.rows[host]} then {second.rows[host]}"
    assert first.run.returncode == 0, first.run.tail(30)
    assert (first.exit_code, second.exit_code) == (RUNNING, RUNNING), first.command.stderr + second.command.stdout

    assert run.summary() is None, f"{run.run_id} finished before the kill: raise OVERRIDES' max_steps"
    on_host(worker, "docker", "kill", run.container(worker))
    killed = status(fault_lab.lab, hosts, log_name="faults-status-killed")
    restarts = int(killed.rows[worker][3])
    assert killed.state == "recovering" or restarts >= 1, (
        f"after docker kill of {worker}'s trainer: state {killed.state}, its row {killed.rows[worker]}")
    assert killed.run.returncode == 0, killed.run.tail(30)
    assert killed.exit_code == RUNNING, killed.command.stdout + killed.command.stderr

    summary = run.wait_for_summary()
    assert_completed(run, summary)
    finished = status(fault_lab.lab, hosts, log_name="faults-status-finished")
    assert finished.state == "finished", finished.run.tail(30)
    assert finished.run.returncode == 0
    assert finished.exit_code == FINISHED, finished.command.stdout + finished.command.stderr
    assert finished.command.stdout.splitlines()[0] == f"run {run.run_id}: finished", finished.command.stdout
    assert int(finished.rows[worker][3]) >= 1, f"the killed worker's restarts: {finished.rows[worker]}"
    for host in hosts:
        assert finished.rows[host][4] == f"{OVERRIDES['max_steps']}/{OVERRIDES['max_steps']}", finished.rows[host]
    assert finished.rows[hosts[0]][8].startswith("ckpt-"), f"the master's newest checkpoint: {finished.rows[hosts[0]]}"


def test_the_probe_measures_every_pair_and_stops_a_deployment_below_its_limits(fault_lab):
    run_id = f"faults-probe-limits-{fault_lab.session_tag}"
    # Replacing a run that may still train (after a failed case) happens only after the probe passed.
    limits = {"trainer_probe_max_rtt_ms": 0.0001, "trainer_probe_min_bus_bandwidth_mb_s": 1e9,
              "trainer_replace_running": True}
    playbook = fault_lab.lab.playbook("site.yml", "--tags", "trainer", "-e",
                                      json.dumps({**run_vars(run_id, {"max_steps": 20}), **limits}),
                                      log_name="faults-probe-limits")
    assert playbook.returncode != 0, f"site.yml passed a network below the probe's limits (log {playbook.log})"
    first, second = fault_lab.cluster().names
    for source, target in ((first, second), (second, first)):
        row = re.search(rf"{source}\s+{target}\s+([\d.]+)\s+([\d.]+)\s+0\s+(\d+)\s+ok", playbook.text)
        assert row, f"no probe row {source} -> {target} with figures (log {playbook.log}):\n{playbook.tail(40)}"
        assert 0 < float(row[1]) <= float(row[2]) and int(row[3]) >= 1280, row[0]
        assert f"{source} -> {target}: round trip" in playbook.text and "above the limit of 0.0001 ms" in playbook.text
    assert re.search(rf"the all-reduce across {first}, {second}: bus bandwidth [\d,.]+ MB/s, below the limit",
                     playbook.text), playbook.tail(40)
    assert re.search(r"all-reduce of [\d.]+ MB \(the run's gradients\) across 2 hosts", playbook.text)
    master = fault_lab.cluster().trainer_container(first)
    assert master.labels.get(RUN_ID_LABEL) != run_id, "a trainer started although the probe failed"
