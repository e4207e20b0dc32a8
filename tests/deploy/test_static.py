"""Static checks of the Ansible half: syntax, ansible-lint (production profile), yamllint, and
role settings kept in step with their argument specs."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from .helpers import REPO, ansible_env, tool

ROLES = ["docker", "swarm", "overlay_network", "trainer"]


@pytest.mark.parametrize("playbook", ["site.yml", "playbooks/site.yml", "playbooks/teardown.yml"])
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
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert name.startswith(role + "_"), f"{name} lacks the role's prefix"
        assert spec.get("description"), f"{name} has no description"
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{name}: spec default differs from defaults/main.yml"


def test_site_checks_before_it_changes_anything():
    root = yaml.safe_load((REPO / "site.yml").read_text())
    assert [play["ansible.builtin.import_playbook"] for play in root] == ["playbooks/site.yml"]
    stages = [play["ansible.builtin.import_playbook"]
              for play in yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())]
    assert stages == ["preflight.yml", "docker.yml", "swarm.yml", "overlay_network.yml", "trainer.yml"]
    preflight = yaml.safe_load((REPO / "playbooks" / "preflight.yml").read_text())
    assert all(play["any_errors_fatal"] for play in preflight)
    assert all("become" not in play for play in preflight)
    for stage in stages[1:]:
        plays = yaml.safe_load((REPO / "playbooks" / stage).read_text())
        assert all(play.get("any_errors_fatal") for play in plays), f"{stage}: a failed host must stop every host"


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
