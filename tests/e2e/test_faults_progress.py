"""playbooks/status.yml on a run of the fault lab while it trains, after a worker's container was
killed, and once it finished. (The failed run is case 8a's, in test_faults_identity.py.) Its name
puts it after the process faults and before the provisioning cases, on the lab of two hosts."""

from __future__ import annotations

import time

from .fault_lab import FAULT_OVERRIDES, assert_completed
from .faults import on_host
from .status import status

# Long enough to read the run twice while it trains, kill a container and see it back.
OVERRIDES = dict(FAULT_OVERRIDES, max_steps=900)


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

    on_host(worker, "docker", "kill", run.container(worker))
    killed = status(fault_lab.lab, hosts, log_name="faults-status-killed")
    restarts = int(killed.rows[worker][3])
    assert killed.state == "recovering" or restarts >= 1, (
        f"after docker kill of {worker}'s trainer: state {killed.state}, its row {killed.rows[worker]}")
    assert killed.run.returncode == 0, killed.run.tail(30)

    summary = run.wait_for_summary()
    assert_completed(run, summary)
    finished = status(fault_lab.lab, hosts, log_name="faults-status-finished")
    assert finished.state == "finished", finished.run.tail(30)
    assert finished.run.returncode == 0
    assert int(finished.rows[worker][3]) >= 1, f"the killed worker's restarts: {finished.rows[worker]}"
    for host in hosts:
        assert finished.rows[host][4] == f"{OVERRIDES['max_steps']}/{OVERRIDES['max_steps']}", finished.rows[host]
    assert finished.rows[hosts[0]][8].startswith("ckpt-"), f"the master's newest checkpoint: {finished.rows[hosts[0]]}"
