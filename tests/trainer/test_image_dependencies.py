"""What the trainer image installs: the pinned requirements cover chargpt's imports and nothing for plotting, and
the build stages prune torch's tests and headers before the venv reaches the final image, and the trainer's code
is a layer of its own."""

import ast
import re
import sys
import tomllib

from conftest import APP_DIR

PLOTTING_STACK = {"matplotlib", "pillow", "fonttools", "contourpy", "kiwisolver", "cycler", "pyparsing"}


def pinned_requirements() -> dict[str, str]:
    lines = (APP_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def imported_modules() -> set[str]:
    """The top-level modules chargpt's files import, its own relative imports left out."""
    names = set()
    for path in (APP_DIR / "chargpt").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_chargpt_imports_only_the_standard_library_and_pinned_packages():
    outside = imported_modules() - set(sys.stdlib_module_names) - {"chargpt"}
    assert outside <= set(pinned_requirements()), outside


def test_no_plotting_stack_is_pinned_and_the_package_asks_for_the_pinned_versions():
    pins = pinned_requirements()
    assert not PLOTTING_STACK & set(pins)
    dependencies = tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for dependency in dependencies:
        name, version = dependency.split("==")
        assert pins.get(name) == version, dependency


def test_the_build_stages_prune_torch_before_the_venv_is_copied():
    dockerfile = (APP_DIR / "Dockerfile").read_text(encoding="utf-8")
    stages, final = dockerfile.split("COPY --from=", 1)
    for removed in ("torch/test", "torch/include", "torch/bin", "-name tests", "pip uninstall"):
        assert removed in stages, removed
    assert not re.search(r"^(RUN|COPY)\b.*\bpip\b", final, re.MULTILINE), "the final stage must not install"


def test_the_trainer_code_is_a_layer_of_its_own_after_the_dependencies():
    """A change to chargpt's code must not make a new layer of torch for every host to fetch."""
    copies = re.findall(r"^COPY --from=(\w+) (\S+)", (APP_DIR / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    assert copies == [("runtime", "/opt/venv"), ("trainer", "/opt/chargpt")], copies
