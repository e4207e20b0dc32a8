"""ansible.cfg's stdout callback: Ansible's default output, with a training run's progress where the
default would print "FAILED - RETRYING" for every poll of a task that waits for the run, and a brief
mode for people who want the stages and the results rather than every task."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback.default import CallbackModule as DefaultCallback

DOCUMENTATION = """
    name: chargpt
    type: stdout
    short_description: Ansible's default output, with a training run's progress while a task waits for it
    description:
      - Ansible's default output. A task that polls a run (until/retries) and prints a progress.json record
        among its output shows the run's step, loss, tokens/s and ETA instead of "FAILED - RETRYING" lines,
        at most every ANSIBLE_CHARGPT_PROGRESS_EVERY_S seconds (default 10) and only when the step moved.
      - With ANSIBLE_CHARGPT_BRIEF=1 in the environment, the screen shows the stages (plays), what the roles show
        people (their debug messages), the run's progress, failures, warnings and the recap; everything
        else still goes to the log file (ANSIBLE_LOG_PATH) when one is set. A debug message shows as its
        text.
      - After the recap of site.yml, each host it could not reach gets a line that says what to do (bring it
        back, or remove it from the inventory, and for the master which groups to edit).
    extends_documentation_fragment:
      - default_callback
      - result_format_callback
"""

# Its settings are ANSIBLE_CHARGPT_*: the trainer's own check, which the preflight runs on the control
# node, takes every CHARGPT_<KEY> variable of the environment for a setting of the run.
BRIEF_VARIABLE, PROGRESS_EVERY_VARIABLE = "ANSIBLE_CHARGPT_BRIEF", "ANSIBLE_CHARGPT_PROGRESS_EVERY_S"
DEBUG_ACTIONS = frozenset({"debug", "ansible.builtin.debug", "ansible.legacy.debug"})


def progress_record(result: dict) -> dict | None:
    """The progress.json record (a JSON object, over one line or several) that ends a polling task's
    output, if any."""
    stdout = result.get("stdout") or ""
    start = stdout.find("{")
    try:
        record = json.loads(stdout[start:]) if start >= 0 else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and {"step", "max_steps", "state"} <= record.keys() else None


def duration(seconds) -> str:
    seconds = int(round(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def unreachable_advice(host: str, groups: dict[str, list[str]]) -> str:
    """What to do about a host that site.yml could not reach, by its place in the inventory
    (groups: the host's groups, each with its hosts in inventory order). The group names are the
    cluster role's defaults (cluster_master_group, ...): a callback sees no role variables, and a
    host of renamed groups gets the advice without the part about its groups."""
    is_master = host in groups.get("master", [])
    if is_master:
        without = ("if it is lost for good, remove it from the inventory, put another host under master and first "
                   "under managers, and run site.yml again")
    else:
        first_manager = groups.get("managers", [None])[0] == host
        without = ("to go on without it, remove it from the inventory"
                   + (", list another host first under managers" if first_manager else "")
                   + " and run site.yml again")
    role = "the master" if is_master else "a worker" if host in groups.get("cluster", []) else ""
    return (f"{host}{f' ({role})' if role else ''} could not be reached. Bring it back (its power, network and SSH) "
            f"and run site.yml again, or, {without}: the hosts left train on from the newest checkpoint they hold, "
            f"at the smaller world size (README: When a host dies).")


def progress_line(record: dict) -> str:
    loss = "-" if record.get("loss") is None else f"{record['loss']:.4f}"
    return (f"run {record['state']}: step {record['step']}/{record['max_steps']} | loss {loss} | "
            f"{record.get('tokens_per_s') or 0:,.0f} tokens/s | eta {duration(record.get('eta_s'))} | "
            f"world size {record.get('world_size', '-')}")


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "chargpt"

    def __init__(self):
        super().__init__()
        self._brief = os.environ.get(BRIEF_VARIABLE, "") not in ("", "0")
        self._progress_every_s = float(os.environ.get(PROGRESS_EVERY_VARIABLE, "10"))
        self._last_progress = (None, 0.0)  # (step, when) of the latest progress line
        self._showing = True
        self._advise_unreachable = False
        self._unreachable: dict[str, dict[str, list[str]]] = {}  # host: its groups and their hosts
        if self._brief:
            # Every line goes through here, the other callbacks' (profile_tasks) too: what a person does
            # not need goes to the log file only. Errors and warnings (stderr) always show.
            screen = self._display.display

            def display(msg="", *args, **kwargs):
                if not (self._showing or kwargs.get("stderr")):
                    kwargs["log_only"] = True
                return screen(msg, *args, **kwargs)

            self._display.display = display

    def _show(self, showing: bool) -> None:
        self._showing = showing or not self._brief

    def v2_playbook_on_start(self, playbook):
        # Only site.yml gets the advice: the other playbooks name unreachable hosts their own way.
        self._advise_unreachable = os.path.basename(playbook._file_name) == "site.yml"
        super().v2_playbook_on_start(playbook)

    def v2_playbook_on_play_start(self, play):
        self._show(True)
        super().v2_playbook_on_play_start(play)
        self._show(False)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._show(False)
        super().v2_playbook_on_task_start(task, is_conditional)

    def v2_runner_on_ok(self, result):
        if self._brief and result.task.action in DEBUG_ACTIONS and "msg" in result.result:
            # The message as a person reads it, not as a result.
            message = result.result["msg"]
            self._show(True)
            self._display.display("\n".join(map(str, message)) if isinstance(message, list) else str(message))
            self._show(False)
            return
        super().v2_runner_on_ok(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._show(not ignore_errors)
        super().v2_runner_on_failed(result, ignore_errors)
        self._show(False)

    def v2_runner_item_on_failed(self, result):
        self._show(True)
        super().v2_runner_item_on_failed(result)
        self._show(False)

    def v2_runner_on_unreachable(self, result):
        host = result._host
        self._unreachable.setdefault(host.get_name(), {
            group.get_name(): [member.get_name() for member in group.get_hosts()] for group in host.get_groups()})
        self._show(True)
        super().v2_runner_on_unreachable(result)
        self._show(False)

    def v2_runner_retry(self, result):
        record = progress_record(result.result)
        if record is None:
            return super().v2_runner_retry(result)
        step, shown_at = self._last_progress
        now = time.monotonic()
        if record["step"] != step and now - shown_at >= self._progress_every_s:
            self._last_progress = (record["step"], now)
            self._show(True)
            self._display.display(progress_line(record))
            self._show(False)

    def v2_playbook_on_stats(self, stats):
        self._show(True)
        super().v2_playbook_on_stats(stats)
        if self._advise_unreachable:
            for host, groups in self._unreachable.items():
                self._display.display(unreachable_advice(host, groups))
        self._show(False)
