"""What the roles define, read from the roles themselves instead of copied into the tests:
role_default() reads roles/<role>/defaults/main.yml (simple references between defaults resolved),
layout() runs playbooks/layout.yml, which shows every host's place in the cluster as the cluster
role derives it (node rank, world size, container names, the overlay network, the managers)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jinja2
import yaml
from jinja2 import meta
from jinja2.nativetypes import NativeEnvironment

from . import REPO
from .inventory import inventory_files
from .playbook import run_playbook

ROLES_DIR = REPO / "roles"
LAYOUT_PLAYBOOK = REPO / "playbooks" / "layout.yml"
# The JSON callback on stdout and no other callback beside it (ansible.cfg's profile_tasks would
# write into the JSON): callbacks_enabled names the JSON callback itself, which adds nothing.
LAYOUT_ENV = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.json"}
# Defaults are rendered the way Ansible renders them: a value that is one expression keeps its type.
TEMPLATES = NativeEnvironment(undefined=jinja2.StrictUndefined)
_layouts: dict[Path, tuple[tuple, dict]] = {}


def role_defaults(role: str) -> dict:
    """roles/<role>/defaults/main.yml as written (templates not rendered)."""
    return yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text()) or {}


def role_task_names(role: str, tasks_file: str) -> list[str]:
    """The tasks of roles/<role>/tasks/<tasks_file> as ansible-playbook names them ("role : name"),
    the tasks inside a block in place of the block; an import of another file is no task of its own."""
    entries = yaml.safe_load((ROLES_DIR / role / "tasks" / tasks_file).read_text())
    return [f"{role} : {task['name']}" for entry in entries for task in entry.get("block", [entry])
            if "ansible.builtin.import_tasks" not in task]


def role_default(role: str, name: str):
    """A default of a role, with "{{ other_default }}" references rendered; the defaults of every role
    are the context. A default that needs Ansible (facts, groups, lookups, its filters) is refused."""
    defaults = role_defaults(role)
    if name not in defaults:
        raise KeyError(f"roles/{role}/defaults/main.yml has no {name}")
    context = {}
    for path in sorted(ROLES_DIR.glob("*/defaults/main.yml")):
        context.update(yaml.safe_load(path.read_text()) or {})
    return _render(defaults[name], context, [name])


def _render(value, context: dict, chain: list[str]):
    if isinstance(value, list):
        return [_render(item, context, chain) for item in value]
    if isinstance(value, dict):
        return {key: _render(item, context, chain) for key, item in value.items()}
    if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
        return value
    where = f"{' -> '.join(chain)} = {value!r}"
    try:
        template = TEMPLATES.parse(value)
        names = meta.find_undeclared_variables(template)  # also refuses filters that only Ansible has
    except jinja2.TemplateError as error:
        raise ValueError(f"{where}: {error.message}") from error
    unknown = sorted(names - set(context))
    if unknown:
        raise ValueError(f"{where} needs {unknown}, which only Ansible knows")
    looping = sorted(names & set(chain))
    if looping:
        raise ValueError(f"{where} refers to itself through {looping}")
    values = {ref: _render(context[ref], context, [*chain, ref]) for ref in names}
    try:
        return TEMPLATES.from_string(template).render(values)
    except jinja2.TemplateError as error:
        raise ValueError(f"{where}: {error.message}") from error


def layout(inventory: str | Path) -> dict[str, dict]:
    """{host: its layout} for every host of the inventory's cluster: the keys playbooks/layout.yml
    shows (name, node_rank, nnodes, nproc_per_node, world_size, master, first_manager, managers,
    trainer_container, master_container, master_alias, node_alias, overlay_network, ...). Read once
    per inventory and kept until one of its files (or the layout's playbook or role) changes."""
    path = Path(inventory).resolve()
    files = [*inventory_files(path), LAYOUT_PLAYBOOK, ROLES_DIR / "cluster" / "defaults" / "main.yml"]
    stamp = tuple((str(file), file.stat().st_mtime_ns, file.stat().st_size) for file in files)
    cached = _layouts.get(path)
    if cached is None or cached[0] != stamp:
        cached = _layouts[path] = (stamp, _read_layout(path))
    return copy.deepcopy(cached[1])


def _read_layout(inventory: Path) -> dict[str, dict]:
    run = run_playbook(LAYOUT_PLAYBOOK, inventory, timeout=300, env=LAYOUT_ENV)
    start = re.search(r"^\{$", run.output, re.M)
    report = json.JSONDecoder().raw_decode(run.output, start.start())[0] if start else None
    if run.returncode != 0 or report is None:
        failures = [f"{host}: {result.get('msg', result)}" for play in (report or {}).get("plays", [])
                    for task in play["tasks"] for host, result in task["hosts"].items() if result.get("failed")]
        raise RuntimeError(f"`{' '.join(run.command)}` exited {run.returncode}: "
                           + ("\n".join(failures) if failures else run.tail(30)))
    return {host: result["msg"] for host, result in report["plays"][0]["tasks"][-1]["hosts"].items()}
