#!/usr/bin/env bash
# The README's second command: set up the control node, then run every test (trainer unit and
# multi-process tests, Ansible static checks, end-to-end tests against a lab of simulated hosts).
# Extra arguments go to pytest; paths among them replace tests/. Fails when any test fails and when
# no test ran at all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lab/bootstrap.sh
# ansible-playbook, ansible-inventory and torchrun must come from .venv for every subprocess.
export PATH="$PWD/.venv/bin:$PATH"

start=$SECONDS
status=0
# Paths among the arguments (tests/trainer, tests/e2e/test_faults_processes.py::case) choose what runs;
# without one, every test under tests/ runs.
targets=(tests)
for arg in "$@"; do
    if [[ -e "${arg%%::*}" ]]; then targets=(); break; fi
done
# harness.suite_costs records what each test file cost (docs/TESTING.md); tests/ makes it importable.
# --durations: the slowest tests of the run, the first place to look when the suite grows.
PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" python -m pytest -p harness.suite_costs -ra --durations=30 \
    "${targets[@]}" "$@" ||
    status=$?
echo "tests/run.sh: pytest finished in $((SECONDS - start)) s with exit status $status" >&2
if ((status == 5)); then
    echo "tests/run.sh: no tests ran; that is a failure (check the paths and -k/-m filters given)" >&2
fi
exit "$status"
