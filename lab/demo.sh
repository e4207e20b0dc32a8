#!/usr/bin/env bash
# The README's first command: set up the control node, bring up a lab of two simulated hosts,
# and run site.yml against it, which trains a model across both hosts (world size 2) on
# data/input.txt and fetches the results to artifacts/<run id>/ on this machine.
#   DEMO_PRESET   trainer preset (default: cpu, a few minutes; smoke: seconds, a toy model)
#   DEMO_HOSTS    number of simulated hosts (default: 2)
#   LAB_NAME      the lab to use (default: lab)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

preset="${DEMO_PRESET:-cpu}"
hosts="${DEMO_HOSTS:-2}"
lab="${LAB_NAME:-lab}"
run_id="demo-$preset-$hosts"
start=$SECONDS

lab/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
inventory="$(LAB_NAME="$lab" lab/lab up --hosts "$hosts")"
inventory_dir="$(dirname "$inventory")"

# The screen gets the stages, the probe's table, the run's progress, failures and the results
# (ANSIBLE_CHARGPT_BRIEF, plugins/callback/chargpt.py); Ansible's whole output goes to the log file.
log="$PWD/artifacts/$run_id.log"
mkdir -p "$(dirname "$log")"
rm -f "$log"
echo "demo: site.yml on $hosts simulated hosts, preset $preset; Ansible's full output: $log"
ANSIBLE_CHARGPT_BRIEF=1 ANSIBLE_LOG_PATH="$log" ansible-playbook site.yml -i "$inventory_dir" \
    -e "{\"trainer_preset\": \"$preset\", \"trainer_run_id\": \"$run_id\", \"trainer_wait\": true}" ||
    { echo "demo: site.yml failed; the failure is above, every task in $log" >&2; exit 1; }

artifacts="$PWD/artifacts/$run_id"
for file in model.pt sample.txt loss.svg; do
    [[ -s "$artifacts/$file" ]] || { echo "demo: $artifacts/$file is missing: the run did not finish (see the output above)" >&2; exit 1; }
done
cat <<MSG

Trained across $hosts simulated hosts in $((SECONDS - start)) s. On this machine:
  model        $artifacts/model.pt
  sample text  $artifacts/sample.txt
  loss chart   $artifacts/loss.svg
  metrics      $artifacts/metrics.jsonl
  Ansible log  $log
More text:  .venv/bin/chargpt sample --run-dir $artifacts --prompt "ROMEO:" --chars 300
Look at the hosts: LAB_NAME=$lab lab/lab status    Remove them: LAB_NAME=$lab lab/lab down
MSG
