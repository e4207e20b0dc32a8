"""The status playbook's filters: the run's state from the hosts' rows, and the table."""

from __future__ import annotations

import importlib.util

import pytest

from harness import REPO

_spec = importlib.util.spec_from_file_location("run_status", REPO / "roles/run_status/filter_plugins/run_status.py")
run_status = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_status)


def row(host="node1", rank=0, container="running", exit_code=None, supervisor="active", restarts=0, step=120,
        **progress):
    values = dict(host=host, node_rank=rank, container=container, exit_code=exit_code, supervisor=supervisor,
                  restarts=restarts, step=step, max_steps=600, loss=2.3456, tokens_per_s=33410.4, eta_s=75.0,
                  checkpoint="ckpt-00000100.pt", age_s=3.2, error=None)
    values.update(progress)
    if step is None:
        values.update(max_steps=None, loss=None, tokens_per_s=None, eta_s=None, checkpoint=None, age_s=None)
    return values


@pytest.mark.parametrize("rows, finished, state", [
    ([row(), row("node2", 1, checkpoint=None)], False, "training"),
    ([row(step=None), row("node2", 1, step=None)], False, "starting"),
    ([row(), row("node2", 1, container="exited", exit_code=137)], False, "recovering"),
    ([row(restarts=1), row("node2", 1, step=None)], False, "recovering"),
    # the worker's container started again after it last wrote its progress: not trained since
    ([row(), row("node2", 1, started_at="2026-11-28T21:40:03.123456789Z", updated_at=1795902000.0)], False,
     "recovering"),
    ([row(), row("node2", 1, started_at="2026-11-28T21:40:03.123456789Z", updated_at=1795902010.0)], False,
     "training"),
    ([row(container="exited", exit_code=1, supervisor="failed"), row("node2", 1)], False, "failed"),
    ([row(container="exited", exit_code=2, supervisor="activating"), row("node2", 1)], False, "failed"),
    ([row(container="exited", exit_code=4, supervisor="activating"), row("node2", 1)], False, "failed"),
    ([row(container="exited", exit_code=0, supervisor="inactive"), row("node2", 1, container="exited", exit_code=0)],
     True, "finished"),
    # docker stop of one host: the others wait for it in the rendezvous
    ([row(), row("node2", 1, container="exited", exit_code=143, supervisor="inactive")], False, "stopped"),
])
def test_run_state(rows, finished, state):
    assert run_status.run_state(rows, finished) == state


def test_a_host_that_exited_zero_while_the_others_run_is_no_failure():
    assert run_status.run_state([row(), row("node2", 1, container="exited", exit_code=0, supervisor="inactive")],
                                False) == "recovering"


def test_table_has_a_header_and_a_row_per_host_in_rank_order_with_aligned_columns():
    lines = run_status.status_table([
        row("node2", 1, container="exited", exit_code=137, restarts=2, step=None),
        row("node1", 0, eta_s=3725),
    ])
    assert lines[0].split() == ["host", "rank", "container", "restarts", "step", "loss", "tokens/s", "eta",
                                "checkpoint", "updated"]
    assert lines[1].split() == ["node1", "0", "running", "0", "120/600", "2.3456", "33,410", "1h02m05s",
                                "ckpt-00000100.pt", "0m03s", "ago"]
    assert lines[2].split() == ["node2", "1", "exited(137)", "2", "-", "-", "-", "-", "-", "-"]
    starts = [lines[0].index(column) for column in ("rank", "step", "checkpoint")]
    assert [lines[1].index(value) for value in ("0", "120/600", "ckpt-")] == starts


def test_table_ends_with_each_failed_hosts_error_line():
    lines = run_status.status_table([row("node2", 1, container="exited", exit_code=2, supervisor="inactive",
                                         step=None, error="chargpt: error: bad corpus"), row("node1", 0)])
    assert len(lines) == 4 and lines[-1] == "node2: chargpt: error: bad corpus"


def test_the_failure_message_names_each_failed_host_with_its_error_line():
    rows = [row("node2", 1, container="exited", exit_code=137), row("node3", 2),
            row(container="exited", exit_code=2, error="chargpt: error: batch_size=4 is too small")]
    assert run_status.failure_message(rows, "r1") == (
        "run r1 failed: node1 (exited, exit code 2): chargpt: error: batch_size=4 is too small; "
        "node2 (exited, exit code 137): no error line in its log")
