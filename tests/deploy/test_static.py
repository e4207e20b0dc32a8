"""Static checks of the Ansible half: syntax, ansible-lint (production profile), yamllint, and
role settings kept in step with their argument specs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from harness.roles import role_task_names

from .helpers import REPO, ansible_env, tool

ROLES = ["cluster", "validate_inventory", "docker", "swarm", "overlay_network", "trainer_image", "image_registry", "trainer",
         "network_probe", "run_artifacts", "run_status", "run_logs"]
STAGES = ["docker", "swarm", "overlay_network", "trainer"]


@pytest.mark.parametrize("playbook", ["site.yml", "playbooks/site.yml", "playbooks/teardown.yml", "playbooks/layout.yml",
                                      "playbooks/status.yml", "playbooks/logs.yml", "playbooks/stop.yml",
                                      *[f"playbooks/{stage}.yml" for stage in STAGES]])
def test_playbook_syntax(playbook):
    result = subprocess.run(
        [tool("ansible-playbook"), "--syntax-check", "-i", "inventory/example/hosts.yml", playbook],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile():
    result = subprocess.run([tool("ansible-lint"), "--profile", "production", "--offline"],
                            cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint():
    result = subprocess.run([tool("yamllint"), "--strict", "."], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", ROLES)
def test_role_settings_match_argument_specs(role):
    """Every default is declared in meta/argument_specs.yml and every declared option has a default."""
    defaults_file = REPO / "roles" / role / "defaults" / "main.yml"
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert name.startswith(role + "_"), f"{name} lacks the role's prefix"
        assert spec.get("description"), f"{name} has no description"
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{name}: spec default differs from defaults/main.yml"


def imported(playbook: str) -> list[str]:
    return [play["ansible.builtin.import_playbook"] for play in yaml.safe_load((REPO / playbook).read_text())]


def test_site_checks_before_it_changes_anything():
    assert imported("site.yml") == ["playbooks/site.yml"]
    assert imported("playbooks/site.yml") == ["preflight.yml", *[f"stages/{stage}.yml" for stage in STAGES]]
    preflight = yaml.safe_load((REPO / "playbooks" / "preflight.yml").read_text())
    assert all(play["any_errors_fatal"] for play in preflight)
    assert all("become" not in play for play in preflight)
    assert preflight[0]["roles"][0] == {"role": "validate_inventory"}
    for stage in STAGES:
        plays = yaml.safe_load((REPO / "playbooks" / "stages" / f"{stage}.yml").read_text())
        assert all(play.get("any_errors_fatal") for play in plays), f"{stage}: a failed host must stop every host"
        assert not any(play["gather_facts"] for play in plays), f"{stage}: the preflight gathered the facts once"
    # The facts are gathered once, by the preflight, after the checks that need no host.
    tasks = preflight[0]["tasks"]
    gathers = [number for number, task in enumerate(tasks) if "ansible.builtin.setup" in task]
    assert preflight[0]["gather_facts"] is False and len(gathers) == 1, tasks
    # The settings of each role with its own, before any host is contacted.
    assert [(task["ansible.builtin.import_role"]["name"], task["ansible.builtin.import_role"]["tasks_from"])
            for task in tasks[:gathers[0]]] == [("trainer", "validate"), ("trainer_image", "validate"),
                                                 ("network_probe", "validate")], tasks


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_alone_runs_the_preflight_first(stage):
    assert imported(f"playbooks/{stage}.yml") == ["preflight.yml", f"stages/{stage}.yml"]


def test_teardown_checks_the_inventory_first():
    first = yaml.safe_load((REPO / "playbooks" / "teardown.yml").read_text())[0]
    assert first["roles"] == [{"role": "validate_inventory"}] and first["any_errors_fatal"]


@pytest.mark.parametrize("role", ["validate_inventory", "swarm", "overlay_network", "trainer_image", "image_registry",
                                  "trainer", "network_probe", "run_artifacts", "run_status", "run_logs"])
def test_roles_read_the_layout_from_the_cluster_role(role):
    meta = yaml.safe_load((REPO / "roles" / role / "meta" / "main.yml").read_text())
    assert {"role": "cluster"} in meta["dependencies"]


# How the layout is derived from the inventory; only roles/cluster may do it.
LAYOUT_DERIVATIONS = [r"groups\[[^\]]+\]\s*\[0\]", r"groups\[[^\]]+\][^}]*\|\s*first", r"\.index\(inventory_hostname\)",
                      r"-rank(\{\{|0\b)", r"-master\b", r"\|\s*length\s*\*", r"node_order\s*\[0\]"]


def test_the_layout_is_derived_only_in_the_cluster_role():
    files = [path for folder in ("roles", "playbooks", "templates") for path in (REPO / folder).rglob("*")
             if path.suffix in (".yml", ".j2") and "roles/cluster/" not in path.as_posix()]
    found = [f"{path.relative_to(REPO)}: {match.group(0)!r}" for path in files
             for pattern in LAYOUT_DERIVATIONS for match in re.finditer(pattern, path.read_text())]
    assert not found, "derive these in roles/cluster/defaults/main.yml and read them from there:\n" + "\n".join(found)


def test_ssh_host_keys_are_checked():
    """Ansible checks the hosts' SSH keys against known_hosts; only the lab's own inventory turns it off."""
    config = (REPO / "ansible.cfg").read_text()
    assert not re.search(r"^\s*host_key_checking\s*=\s*(false|no|0)\b", config, re.IGNORECASE | re.MULTILINE)
    assert "StrictHostKeyChecking=no" not in config
    example = "".join(path.read_text() for path in (REPO / "inventory" / "example").rglob("*.yml"))
    assert "StrictHostKeyChecking=no" not in example and "host_key_checking" not in example


def test_tasks_that_carry_swarm_tokens_log_nothing():
    """Swarm init/join results and anything that touches the join tokens stay out of the log."""
    carrying = []
    for tasks_file in ("main.yml", "prune.yml"):
        for task in yaml.safe_load((REPO / "roles" / "swarm" / "tasks" / tasks_file).read_text()):
            text = yaml.safe_dump(task)
            state = (task.get("community.docker.docker_swarm") or {}).get("state")
            if state in ("present", "join") or "docker_swarm_info" in text or "join_token" in text.lower():
                carrying.append(task["name"])
                assert task.get("no_log") is True, f"{tasks_file}: '{task['name']}' must set no_log: true"
    assert len(carrying) >= 4


def swarm_tasks(tasks_file: str) -> list[dict]:
    return yaml.safe_load((REPO / "roles" / "swarm" / "tasks" / tasks_file).read_text())


def test_managers_listen_on_the_advertised_address_only():
    for task in swarm_tasks("main.yml"):
        swarm = task.get("community.docker.docker_swarm") or {}
        if swarm.get("state") in ("present", "join"):
            assert swarm["listen_addr"] == "{{ swarm_node_addr }}:{{ swarm_listen_port }}", task["name"]


def test_join_tokens_are_rotated_after_nodes_are_removed():
    [rotate] = [task for task in swarm_tasks("prune.yml") if "rotate_worker_token" in yaml.safe_dump(task)]
    swarm = rotate["community.docker.docker_swarm"]
    assert swarm["rotate_worker_token"] is True and swarm["rotate_manager_token"] is True
    assert rotate["when"] == "swarm_stale_nodes | length > 0" and rotate["no_log"] is True


def test_the_swarm_unlock_key_stays_out_of_the_log():
    carrying = [task for task in swarm_tasks("unlock_key.yml") if "unlock_key" in yaml.safe_dump(task)
                and "ansible.builtin.file" not in task]
    assert len(carrying) == 2
    for task in carrying:
        assert task.get("no_log") is True, f"'{task['name']}' must set no_log: true"
    [saved] = [task for task in carrying if "ansible.builtin.copy" in task]
    assert saved["ansible.builtin.copy"]["mode"] == "0600" and saved["delegate_to"] == "localhost"


def readme_settings() -> dict[str, str]:
    """{setting: default as the README's settings table shows it}."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| setting | default | what |"):].split("\n\n", 1)[0].splitlines()[2:]
    shown = {}
    for row in table:
        names, defaults = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`([a-z_]+)`", names)
        values = [value.strip() for value in defaults.split(",")] if len(names) > 1 else [defaults]
        assert len(values) == len(names), f"README row {row!r}: one default per setting"
        shown.update(zip(names, values))
    return shown


def role_defaults() -> dict:
    defaults = {}
    for path in (REPO / "roles").glob("*/defaults/main.yml"):
        defaults.update(yaml.safe_load(path.read_text()))
    return defaults


def as_shown(value) -> str:
    """How the README writes a literal default."""
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list)) and not value:
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def test_readme_settings_table_matches_the_role_defaults():
    """Every setting the README lists exists, and a literal default is shown as the role has it
    (a derived default, like the run id or the artifacts folder, is described in words)."""
    defaults = role_defaults()
    for name, shown in readme_settings().items():
        assert name in defaults, f"the README lists {name}, which no role has (renamed or removed?)"
        value = defaults[name]
        if isinstance(value, str) and "{{" in value or isinstance(value, (dict, list)) and value:
            continue
        assert shown == as_shown(value), f"the README shows {name} defaulting to {shown}; the role says {as_shown(value)}"


def listed_tasks(*args: str) -> list[str]:
    result = subprocess.run([tool("ansible-playbook"), "--list-tasks", "-i", "inventory/example/hosts.yml", "site.yml",
                             *args], cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.strip() for line in result.stdout.splitlines() if "TAGS:" in line]


def test_the_network_probe_is_on_by_default_and_skipped_by_its_tag():
    names = [name for tasks_file in ("main.yml", "measure.yml", "judge.yml")
             for name in role_task_names("network_probe", tasks_file)]
    everything, skipped = listed_tasks(), listed_tasks("--skip-tags", "network_probe")

    def probe_tasks(lines):
        return [line for line in lines if "network_probe" in line.split("TAGS: [", 1)[1].rstrip("]").split(", ")]
    assert set(names) <= {line.split("\t")[0] for line in probe_tasks(everything)}, (
        f"probe tasks that site.yml runs: {probe_tasks(everything)}")
    assert probe_tasks(skipped) == [], "--skip-tags network_probe still runs them"
    assert [line for line in everything if line not in probe_tasks(everything)] == skipped, "it skipped more"


def all_tasks() -> list[dict]:
    """Every task (a mapping with a name) in the roles' and playbooks' YAML, blocks' tasks included."""
    found = []

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "name" in node:
                found.append(node)
            for value in node.values():
                walk(value)
    for folder in ("roles", "playbooks"):
        for path in (REPO / folder).rglob("*.yml"):
            walk(yaml.safe_load(path.read_text()))
    return found


def test_the_bootstrap_compiles_every_collection_the_roles_use():
    """lab/bootstrap.sh compiles only the collections the project uses (the ansible package ships
    about a hundred): one that a role starts to use must be compiled too."""
    pattern = re.search(r"^UNUSED_COLLECTIONS='([^']+)'$", (REPO / "lab" / "bootstrap.sh").read_text(), re.M)
    assert pattern, "lab/bootstrap.sh no longer sets UNUSED_COLLECTIONS"
    used = {tuple(key.split(".")[:2]) for task in all_tasks() for key in task
            if re.fullmatch(r"[a-z]\w*\.[a-z]\w*\.[a-z]\w*", key) and not key.startswith("ansible.")}
    assert used, "no collection module found in the roles"
    skipped = [f"{namespace}.{name}" for namespace, name in sorted(used)
               if re.search(pattern.group(1), f"site-packages/ansible_collections/{namespace}/{name}/plugins/x.py")]
    assert not skipped, f"lab/bootstrap.sh does not compile {skipped}: add them to UNUSED_COLLECTIONS' exceptions"


def test_the_lab_image_with_the_engine_holds_what_the_docker_role_installs_on_debian_13():
    """lab/lab up --with-engine stands for a provider's image with the engine installed: site.yml must
    find every package it would install there (the eight-host lab asserts that it installs none)."""
    role = REPO / "roles" / "docker"
    packages = (yaml.safe_load((role / "vars" / "Debian.yml").read_text())["docker_distribution_packages"]
                + yaml.safe_load((role / "defaults" / "main.yml").read_text())["docker_packages_runtime"])
    listed = re.search(r'^ENGINE_PACKAGES="([^"]*)"', (REPO / "lab" / "images.sh").read_text(), re.MULTILINE)
    assert listed and sorted(listed.group(1).split()) == sorted(packages), (listed and listed.group(1), packages)
