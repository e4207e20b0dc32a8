"""Fault cases 8a, 8c and 8d (issue 11): a run that cannot train never hides behind a green
playbook, and one run id is one experiment. A setting only the trainer can judge ends site.yml at
once with the trainer's line and is not restarted; `$` reaches the container literally; another
corpus under the run id of a finished run is refused. (8b and 8e, the same refusals while a run
trains, hit the long run of test_faults_provisioning.py.) They run after the bad-input cases
(6a-6j) and before the faults during a run (see fault_lab.py)."""

from __future__ import annotations

import time

from .fault_lab import (BASE_RUN, SUPERVISOR_WATCH_S, assert_refused_another_corpus, changed_corpus, deploy,
                        recording, run_vars, stop_trainers)
from .faults import STEP_LINE, CaseResult, FaultRun, on_host
from .status import FAILED, LOGS_LINE, bin_command, status

# What the fault injection makes `chargpt check` refuse, as a setting only the trainer can judge.
REFUSAL = "fault injection: max_step is not a setting"
# A value Compose would interpolate unless the role escapes it.
LITERAL = "cost $5, ${HOME} and $$ stay"
# How long a refused deployment may take to fail (the wait for a start is 600 s by default).
REFUSED_WITHIN_S = 180


def container_states(run: FaultRun, host: str) -> dict:
    state = on_host(host, "docker", "inspect", "--format",
                    "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}} {{.State.StartedAt}}",
                    run.container(host)).stdout.split()
    return dict(zip(("status", "exit_code", "restart_count", "started_at"), state))


def test_a_setting_only_the_trainer_judges_ends_the_deployment_at_once(fault_lab):
    run_id = f"faults-refused-{fault_lab.session_tag}"
    environment = {"TRAIN_FAULT_REFUSE_CHECK": REFUSAL, "E2E_LITERAL": LITERAL}
    with recording(fault_lab, CaseResult("8a", "site.yml with a setting only the trainer refuses (simulated)",
                                         "")) as result:
        playbook, took = deploy(fault_lab, run_vars(run_id, {"max_steps": 50}, environment=environment),
                                "faults-refused-setting")
        run = FaultRun(fault_lab.lab, fault_lab.cluster(), run_id, 50)
        result.details = {"exit_code": playbook.returncode, "failed_after_s": took}
        assert playbook.returncode != 0, f"site.yml succeeded although every trainer refused (log {playbook.log})"
        assert took < REFUSED_WITHIN_S, f"site.yml took {took} s to fail (log {playbook.log})"
        assert REFUSAL in playbook.text, f"the trainer's line is not in site.yml's output (log {playbook.log})"
        assert "did not join the group" in playbook.text, playbook.tail(30)
        before = {host: container_states(run, host) for host in run.cluster.names}
        time.sleep(SUPERVISOR_WATCH_S)
        after = {host: container_states(run, host) for host in run.cluster.names}
        result.details["containers"] = after
        for host, state in after.items():
            assert (state["status"], state["exit_code"], state["restart_count"]) == ("exited", "2", "0"), (
                f"{host}: the refused trainer is {state}")
            assert state["started_at"] == before[host]["started_at"], f"{host}: the refused trainer was started again"
        messages = playbook.failure_messages()
        result.progress_lost_steps = 0
        result.outcome = (f"exit {playbook.returncode} after {took} s with the trainer's line "
                          f"({messages[0][:120] if messages else '-'}); no trainer started again in "
                          f"{SUPERVISOR_WATCH_S} s")

    with recording(fault_lab, CaseResult("8d", "a value with `$` in trainer_environment", "")) as result:
        env = fault_lab.cluster().trainer_container(run.master).env
        result.details = {"in_container": env.get("E2E_LITERAL")}
        assert env.get("E2E_LITERAL") == LITERAL, f"the container got {env.get('E2E_LITERAL')!r}, not {LITERAL!r}"
        result.progress_lost_steps = 0
        result.outcome = f"the container's environment holds {LITERAL!r} unchanged"

    failed = status(fault_lab.lab, run.cluster.names, log_name="faults-status-failed")
    assert (failed.run_id, failed.state) == (run_id, "failed"), failed.run.tail(30)
    assert failed.run.returncode == 2, f"status.yml exited {failed.run.returncode} on a failed run"
    assert failed.exit_code == FAILED, f"bin/chargpt-status exited {failed.exit_code}:\n{failed.command.stderr}"
    assert REFUSAL in failed.command.stdout, f"bin/chargpt-status shows no error line:\n{failed.command.stdout}"
    assert all(cells[2] == "exited(2)" for cells in failed.rows.values()), failed.rows
    assert REFUSAL in failed.run.text, f"status.yml does not show the trainer's error line:\n{failed.run.tail(30)}"
    # bin/chargpt-logs --errors: what explains the failure, from every host, and nothing else.
    errors = bin_command("chargpt-logs", fault_lab.lab, "--errors")
    assert errors.returncode == 0, errors.stdout[-2000:] + errors.stderr
    shown = [LOGS_LINE.fullmatch(line) for line in errors.stdout.splitlines()]
    assert shown and all(shown), f"bin/chargpt-logs --errors printed:\n{errors.stdout[:2000]}"
    assert {line["host"] for line in shown if REFUSAL in line["text"]} == set(run.cluster.names), errors.stdout[:2000]
    assert not [line for line in shown if STEP_LINE.search(line["text"])], "--errors showed step lines"


def test_a_finished_run_with_another_corpus_is_not_reported_done(fault_lab, tmp_path):
    with recording(fault_lab, CaseResult("8c", "site.yml (trainer_wait) of the finished base run with another corpus",
                                         "")) as result:
        base = dict(run_vars(BASE_RUN["run_id"], BASE_RUN["overrides"], wait=True),
                    trainer_corpus_path=changed_corpus(tmp_path))
        try:
            playbook, took = deploy(fault_lab, base, "faults-corpus-change-finished")
        finally:
            stop_trainers(fault_lab)
        result.details = {"exit_code": playbook.returncode, "failed_after_s": took}
        assert playbook.returncode != 0, f"site.yml called {BASE_RUN['run_id']} done with another corpus ({playbook.log})"
        assert_refused_another_corpus(playbook, BASE_RUN["run_id"], base["trainer_corpus_path"])
        assert "Artifacts on the control node" not in playbook.output, "site.yml fetched the old run as done"
        messages = playbook.failure_messages()
        result.progress_lost_steps = 0
        result.outcome = f"exit {playbook.returncode} after {took} s: {messages[0][:160] if messages else '-'}"
