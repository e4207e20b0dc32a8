"""The stdout callback of ansible.cfg (plugins/callback/chargpt.py), with a playbook on this machine: a
task that polls a run shows the run's progress instead of "FAILED - RETRYING" lines, other retries
stay as Ansible prints them, and the brief mode of lab/demo.sh (ANSIBLE_CHARGPT_BRIEF=1) keeps the screen to
the stages, the messages for people, the progress, failures and the recap, with every task in the log."""

from __future__ import annotations

import sys

from .helpers import run_playbook

# The poll prints a supervisor state, then a progress.json record (over several lines, as the trainer
# writes it) whose step grows at every poll.
PLAYBOOK = """
- name: Wait for a run
  hosts: all
  gather_facts: false
  tasks:
    - name: Prepare the run
      ansible.builtin.command: "true"
      changed_when: false
    - name: Wait until the run ends
      ansible.builtin.command:
        argv:
          - sh
          - -c
          - >-
            n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; echo active;
            printf '{{\\n  "state": "training",\\n  "step": %d, "max_steps": 40, "loss": 2.5, "tokens_per_s": 12345,
            "eta_s": 75, "world_size": 2\\n}}\\n' $((n * 10))
      register: polled
      until: "polled.stdout is search('step.: 40')"
      retries: 5
      delay: 0
      changed_when: false
    - name: Wait for something else
      ansible.builtin.command: "true"
      register: other
      until: other.rc == 1
      retries: 1
      delay: 0
      changed_when: false
      ignore_errors: true
    - name: Show the result
      ansible.builtin.debug:
        msg: ["the run finished", "its model is here"]
    - name: Fail at the end
      ansible.builtin.fail:
        msg: the last task failed on purpose
"""


def run(tmp_path, **env: str):
    playbook = tmp_path / "poll.yml"
    playbook.write_text(PLAYBOOK.format(counter=tmp_path / "polls"))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    return run_playbook(playbook, inventory, env={"ANSIBLE_CHARGPT_PROGRESS_EVERY_S": "0", **env})


def test_a_poll_of_a_run_shows_its_progress_and_other_retries_stay(tmp_path):
    result = run(tmp_path)
    lines = result.output.splitlines()
    progress = [line for line in lines if line.startswith("run training: ")]
    assert progress == [f"run training: step {step}/40 | loss 2.5000 | 12,345 tokens/s | eta 1m15s | world size 2"
                        for step in (10, 20, 30)], result.output
    assert not [line for line in lines if "RETRYING" in line and "Wait until the run ends" in line]
    assert any(line.startswith("FAILED - RETRYING: [localhost]: Wait for something else (1 retries left)")
               for line in lines), result.output
    assert "TASK [Prepare the run]" in result.output


def test_the_brief_mode_shows_what_a_person_reads_and_logs_everything(tmp_path):
    log = tmp_path / "ansible.log"
    result = run(tmp_path, ANSIBLE_CHARGPT_BRIEF="1", ANSIBLE_LOG_PATH=str(log))
    screen = result.output
    assert result.returncode == 2
    assert "PLAY [Wait for a run]" in screen and "PLAY RECAP" in screen
    assert "run training: step 30/40 |" in screen
    assert "the run finished\nits model is here" in screen
    assert "the last task failed on purpose" in screen
    for hidden in ("TASK [", "ok: [localhost]", "RETRYING", "...ignoring"):
        assert hidden not in screen, f"{hidden!r} reached the screen:\n{screen}"
    logged = log.read_text()
    for task in ("Prepare the run", "Wait until the run ends", "Wait for something else", "Show the result"):
        assert f"TASK [{task}]" in logged, logged


def test_its_variables_are_not_taken_for_settings_of_the_run(tmp_path):
    """The preflight's `chargpt check` runs in the environment of ansible-playbook, where lab/demo.sh
    sets the callback's variables: they must not look like the trainer's CHARGPT_<KEY> settings."""
    from chargpt.config import build_config

    assert build_config("smoke", environ={"ANSIBLE_CHARGPT_BRIEF": "1", "ANSIBLE_CHARGPT_PROGRESS_EVERY_S": "0"}) \
        == build_config("smoke", environ={})
