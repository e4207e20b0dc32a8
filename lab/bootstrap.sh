#!/usr/bin/env bash
# Sets up the control node, idempotently: Debian packages it lacks, a running Docker engine
# (started by hand where there is no systemd), .venv/ with the pinned dependencies and the
# trainer package, app/wheelhouse/ for offline trainer image builds, and data/input.txt.
# Each step is skipped when it is already done.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_DIR/.venv"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/chargpt-dockerd.log}"
DOCKERD_PIDFILE="${DOCKERD_PIDFILE:-/run/chargpt-dockerd.pid}"
SHARED_CORPUS="$REPO_DIR/../shared/data/tinyshakespeare.txt"
CORPUS="$REPO_DIR/data/input.txt"
CORPUS_URL=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt

# This machine's pip.conf names local indexes that pip warns about for every package: keep
# the output readable by dropping just those lines.
pip_quiet() { "$VENV/bin/pip" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

log() { printf '[bootstrap %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Content hash of the given files, to redo a step only when its inputs changed.
fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v ssh >/dev/null || missing+=(openssh-client)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    ((${#missing[@]})) || return 0
    ((EUID == 0)) || die "missing Debian packages ${missing[*]}: run this as root, or: sudo apt-get install -y ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

start_docker_engine() {
    docker info >/dev/null 2>&1 && return 0
    if [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]; then
        log "starting the Docker engine with systemctl"
        systemctl start docker
    else
        ((EUID == 0)) || die "no Docker engine answers and starting dockerd needs root: run this as root"
        log "no Docker engine answers and there is no systemd: starting dockerd (log $DOCKERD_LOG)"
        # A session of its own: the engine outlives the shell (and process group) that started it.
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 &
        echo $! >"$DOCKERD_PIDFILE"
    fi
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { tail -n 20 "$DOCKERD_LOG" >&2 || true; die "the Docker engine did not come up within 60 s (log above)"; }
        sleep 1
    done
    log "Docker engine up: $(docker info -f '{{.ServerVersion}}')"
}

# Every collection but the ones the roles and playbooks use (community.docker, community.crypto).
UNUSED_COLLECTIONS='ansible_collections/(?!community/(docker|crypto)/)'
# uv installs requirements.txt: it downloads in parallel and links from its cache.
UV_VERSION=0.13.9

# pip's value for one of its options, given what `pip config list` prints: its environment
# variable, else its config files.
pip_option() {
    local section value
    for section in :env: install global; do
        value="$(sed -n "s/^$section\.$1='\(.*\)'\$/\1/p" <<<"$2")"
        [[ -n "$value" ]] && { printf '%s\n' "$value"; return 0; }
    done
    return 0
}

# Installs requirements.txt with uv, run from a folder outside .venv so that .venv holds the same
# packages as after pip. uv reads none of pip's configuration: its indexes, find-links (where the
# CPU-only torch wheel is: without it torch 2.13.0 comes from PyPI with gigabytes of CUDA
# packages), constraints and CA bundle are handed over, and every index is searched, as pip does.
# Fails when uv cannot be installed or cannot install, and pip does it then.
uv_install() {
    local uv_dir pip_config args=() env=() item rc=0
    uv_dir="$(mktemp -d)"
    pip_quiet install -q --disable-pip-version-check --target "$uv_dir" "uv==$UV_VERSION" >/dev/null ||
        { rm -rf "$uv_dir"; return 1; }
    pip_config="$("$VENV/bin/pip" config list 2>/dev/null)" || true
    item="$(pip_option index-url "$pip_config")"
    [[ -z "$item" ]] || args+=(--index-url "$item")
    for item in $(pip_option extra-index-url "$pip_config"); do args+=(--extra-index-url "$item"); done
    # pip passes over a local find-links folder that does not exist; uv would stop on it.
    for item in $(pip_option find-links "$pip_config"); do
        [[ "$item" == *://* && "$item" != file://* || -e "${item#file://}" ]] && args+=(--find-links "$item")
    done
    for item in $(pip_option constraint "$pip_config"); do args+=(--constraint "$item"); done
    item="$(pip_option cert "$pip_config")"
    [[ -z "$item" ]] || env+=(SSL_CERT_FILE="$item")
    env "${env[@]}" "$uv_dir/bin/uv" pip install -q --no-config --python "$VENV/bin/python" \
        --index-strategy unsafe-best-match "${args[@]}" -r "$REPO_DIR/requirements.txt" || rc=$?
    rm -rf "$uv_dir"
    return "$rc"
}

create_venv() {
    local stamp="$VENV/.chargpt-requirements" want
    want="$(fingerprint "$REPO_DIR/requirements.txt")"
    [[ -x "$VENV/bin/python" ]] || { log "creating .venv"; python3 -m venv "$VENV"; }
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        log "installing requirements.txt into .venv"
        # pip compiles every module it installs one file at a time (about 45 of the 60 s here, most
        # of it for collections the project never loads); compileall does it on every core at once.
        uv_install || {
            log "uv $UV_VERSION could not install requirements.txt: installing it with pip"
            pip_quiet install -q --disable-pip-version-check --no-compile -r "$REPO_DIR/requirements.txt"
        }
        # A few files need a newer Python (torch's tests) and fail to compile, as they do under pip.
        # Of the collections the ansible package ships, the roles use two: the other 15,000 or so
        # modules would double the time, for files that are never loaded.
        "$VENV/bin/python" -m compileall -qq -j 0 -x "$UNUSED_COLLECTIONS" "$VENV/lib" || true
        echo "$want" >"$stamp"
    fi
}

install_trainer() {
    local pyproject="$REPO_DIR/app/pyproject.toml" stamp="$VENV/.chargpt-app" want
    want="$(fingerprint "$pyproject")"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
    log "installing the trainer package (pip install -e app/)"
    pip_quiet install -q --disable-pip-version-check -e "$REPO_DIR/app"
    echo "$want" >"$stamp"
}

fill_wheelhouse() {
    local requirements="$REPO_DIR/app/requirements.txt" wheelhouse="$REPO_DIR/app/wheelhouse"
    local stamp="$wheelhouse/.chargpt-requirements" want
    want="$(fingerprint "$requirements")"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
    log "downloading the trainer's pinned wheels into app/wheelhouse/"
    mkdir -p "$wheelhouse"
    # The trainer image's Python (Debian 12) is 3.11 like the control node, so these wheels fit it.
    pip_quiet download -q --disable-pip-version-check --only-binary=:all: \
        -r "$requirements" -d "$wheelhouse"
    echo "$want" >"$stamp"
}

provide_corpus() {
    [[ -s "$CORPUS" ]] && return 0
    mkdir -p "$(dirname "$CORPUS")"
    if [[ -s "$SHARED_CORPUS" ]]; then
        cp "$SHARED_CORPUS" "$CORPUS"
        log "data/input.txt copied from ../shared/data/tinyshakespeare.txt"
        return 0
    fi
    die "data/input.txt (the training corpus, tiny-shakespeare) is missing. Get it with:
    curl -fsSL -o data/input.txt $CORPUS_URL
or put any UTF-8 text of at least a few hundred KB at data/input.txt, then run this again."
}

main() {
    local start=$SECONDS
    install_packages
    start_docker_engine
    create_venv
    install_trainer
    fill_wheelhouse
    provide_corpus
    log "control node ready in $((SECONDS - start)) s (activate with: source .venv/bin/activate)"
}

main "$@"
