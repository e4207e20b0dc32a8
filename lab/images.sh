#!/usr/bin/env bash
# Builds the lab's local images from Debian package mirrors (no registry needed):
#   chargpt-base:bookworm         Debian 12 + python3 + venv: the base the trainer image is built FROM
#   chargpt-labhost:trixie        Debian 13 + systemd + sshd + python3: one simulated host (no Docker)
#   chargpt-labhost:trixie-engine the same with the engine's packages installed (not configured, no
#                                 images), as a provider's machine image may come: lab/lab up --with-engine
# Usage: lab/images.sh [base|host|engine-host|all]   (an image that exists is kept; FORCE=1 rebuilds)
set -euo pipefail

LAB_MIRROR="${LAB_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="${LAB_BASE_IMAGE:-chargpt-base:bookworm}"
HOST_IMAGE="${LAB_HOST_IMAGE:-chargpt-labhost:trixie}"
ENGINE_HOST_IMAGE="${LAB_ENGINE_HOST_IMAGE:-chargpt-labhost:trixie-engine}"
# What roles/docker installs on Debian 13 (tests/deploy/test_static.py keeps the list in step).
ENGINE_PACKAGES="docker.io docker-cli docker-compose python3-docker apparmor pigz"
LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[lab %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap SUITE INCLUDES into a scratch folder, let CUSTOMIZE edit it, import it as TAG.
build_rootfs_image() {
    local suite=$1 includes=$2 tag=$3 customize=$4; shift 4
    local rootfs start=$SECONDS
    rootfs="$(mktemp -d /var/tmp/chargpt-rootfs.XXXXXX)"
    log "building $tag: debootstrap $suite (about a minute)"
    if ! debootstrap --variant=minbase --include="$includes" "$suite" "$rootfs" "$LAB_MIRROR" \
        >"$rootfs.log" 2>&1; then
        tail -n 20 "$rootfs.log" >&2
        rm -rf "$rootfs"
        log "debootstrap $suite failed (log above, full log $rootfs.log): check that $LAB_MIRROR is reachable"
        return 1
    fi
    rm -f "$rootfs.log"
    "$customize" "$rootfs"
    copy_apt_mirror_settings "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    if ! tar --numeric-owner -C "$rootfs" -c . | docker import "$@" - "$tag" >/dev/null; then
        rm -rf "$rootfs"
        log "docker import of $tag failed"
        return 1
    fi
    rm -rf "$rootfs"
    log "built $tag in $((SECONDS - start)) s"
}

# Where the control node's mirror serves Release files past their Valid-Until date (a pinned
# snapshot), apt in the images needs the same leniency or `apt-get update` fails there.
copy_apt_mirror_settings() {
    local rootfs=$1
    if apt-config dump 2>/dev/null | grep -q '^Acquire::Check-Valid-Until "false"'; then
        printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
            >"$rootfs/etc/apt/apt.conf.d/99lab-mirror"
    fi
}

customize_base() {
    local rootfs=$1
    # The trainer's Dockerfile creates its venv from this python3.
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
        "$LAB_MIRROR" "$LAB_MIRROR" "$LAB_MIRROR" >"$rootfs/etc/apt/sources.list"
}

customize_host() {
    local rootfs=$1
    printf 'Types: deb\nURIs: %s\nSuites: trixie trixie-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: %s-security\nSuites: trixie-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$LAB_MIRROR" "$LAB_MIRROR" >"$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -f "$rootfs/etc/apt/sources.list"
    # Every host must get its own SSH host keys: drop the image's, make them at first boot.
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    install -m 0644 "$LAB_DIR/host/regenerate-ssh-host-keys.service" "$rootfs/etc/systemd/system/"
    ln -sf /etc/systemd/system/regenerate-ssh-host-keys.service \
        "$rootfs/etc/systemd/system/multi-user.target.wants/regenerate-ssh-host-keys.service"
    install -d -m 0700 "$rootfs/root/.ssh"
    # Units that only make sense on real hardware or a console.
    local unit
    for unit in getty@tty1.service console-getty.service systemd-udevd.service systemd-udev-trigger.service \
        systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
        systemd-firstboot.service systemd-remount-fs.service; do
        ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    : >"$rootfs/etc/machine-id"
    echo labhost >"$rootfs/etc/hostname"
}

build_base() {
    if image_exists "$BASE_IMAGE" && [[ "${FORCE:-0}" != 1 ]]; then
        log "$BASE_IMAGE exists, kept"
        return
    fi
    build_rootfs_image bookworm python3,python3-venv,ca-certificates "$BASE_IMAGE" customize_base \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]'
}

build_host() {
    if image_exists "$HOST_IMAGE" && [[ "${FORCE:-0}" != 1 ]]; then
        log "$HOST_IMAGE exists, kept"
        return
    fi
    build_rootfs_image trixie \
        systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,iproute2,iputils-ping,procps,ca-certificates,sudo,gnupg,curl \
        "$HOST_IMAGE" customize_host \
        -c 'ENV container=docker' -c 'ENV LANG=C.UTF-8' -c 'CMD ["/sbin/init"]'
}

build_engine_host() {
    if image_exists "$ENGINE_HOST_IMAGE" && [[ "${FORCE:-0}" != 1 ]]; then
        log "$ENGINE_HOST_IMAGE exists, kept"
        return
    fi
    build_host
    local start=$SECONDS output
    log "building $ENGINE_HOST_IMAGE: $HOST_IMAGE with $ENGINE_PACKAGES"
    # The packages' own scripts cannot start the engine here (no systemd runs in a build).
    if ! output="$(printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends %s && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb\n' \
        "$HOST_IMAGE" "$ENGINE_PACKAGES" | docker build -q -t "$ENGINE_HOST_IMAGE" - 2>&1)"; then
        printf '%s\n' "$output" | tail -n 20 >&2
        log "building $ENGINE_HOST_IMAGE failed (output above): check that $LAB_MIRROR is reachable"
        return 1
    fi
    log "built $ENGINE_HOST_IMAGE in $((SECONDS - start)) s"
}

main() {
    case "${1:-all}" in
        base) build_base ;;
        host) build_host ;;
        engine-host) build_engine_host ;;
        all) build_base; build_host ;;
        *) echo "usage: lab/images.sh [base|host|engine-host|all]" >&2; exit 2 ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
