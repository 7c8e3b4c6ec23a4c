# nspawn.sh — sourced by the real-systemd tests (systemd-e2e.sh, shared-state-nspawn.sh): a
# Debian root made once with debootstrap and cached, and a booted copy of it. The caller
# defines skip() (print one SKIP line with the reason, exit 0).
#
#   nspawn_base BASE SUITE INCLUDE LOG  debootstrap SUITE (minbase + INCLUDE) into BASE, from the
#                                       host's Debian mirror, unless BASE already holds exactly that
#   nspawn_boot ROOT MACHINE LOG        boot ROOT with systemd as PID 1; sets NSPAWN_PID, LEADER
#                                       and NSPAWN_STATE (running or degraded), or skip()s
#   nspawn_stop                         power the container off (for an EXIT trap)
#   ct COMMAND...                       run COMMAND inside: all its namespaces, a clean environment

nspawn_mirror() { # the host's Debian mirror (deb822 or one-line sources), else deb.debian.org
    local m
    m=$(grep -hs -A3 '^Types: .*deb' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        sed -n 's/^URIs: *\([^ ]*\).*/\1/p' | grep -v -- '-security' | head -1 || true)
    [ -n "$m" ] || m=$(sed -n 's/^deb \(\[[^]]*\] \)\?\(http[^ ]*\) .*/\2/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v -- '-security' | head -1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

nspawn_base() {
    local base=$1 suite=$2 include=$3 log=$4 mirror
    local stamp="$suite $include"
    if [ -f "$base/.weixin-e2e-complete" ] && [ "$(cat "$base/.weixin-e2e-complete")" = "$stamp" ]; then
        return 0
    fi
    mirror=$(nspawn_mirror)
    echo "$(basename "$0"): debootstrap $suite from $mirror into $base (cached for later runs)" >&2
    rm -rf "$base" "$base.tmp"
    mkdir -p "$(dirname "$base")"
    if ! debootstrap --variant=minbase --include="$include" "$suite" "$base.tmp" "$mirror" \
        > "$log" 2>&1; then
        skip "debootstrap $suite from $mirror failed: $(grep -E '^(E|W):' "$log" | tail -1)"
    fi
    # Each boot copies this root: keep it lean.
    chroot "$base.tmp" apt-get clean
    echo "$stamp" > "$base.tmp/.weixin-e2e-complete"
    mv "$base.tmp" "$base"
}

NSPAWN_PID=
LEADER=
NSPAWN_STATE=
nspawn_boot() {
    local root=$1 machine=$2 log=$3
    # The flags: no machined on the host to register with (--register=no) nor a unit of our own
    # (--keep-unit); CAP_BPF and the bpf() syscall for the unit's IPAddressDeny= filter; a
    # private network: only the container's own loopback.
    systemd-nspawn -q -D "$root" -M "$machine" --boot --register=no --keep-unit \
        --capability=CAP_BPF --system-call-filter=bpf --private-network --console=passive \
        < /dev/null > "$log" 2>&1 &
    NSPAWN_PID=$!
    # The container's PID 1 is nspawn's child once it has exec'd systemd (before that the
    # child is still nspawn setting up).
    for _ in $(seq 150); do
        LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd | head -1 || true)
        [ -n "$LEADER" ] && break
        kill -0 "$NSPAWN_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$LEADER" ] || skip "systemd-nspawn did not start a container: $(tail -1 "$log")"
    # is-system-running --wait waits for the boot to finish, but fails at once while PID 1 has
    # not yet opened its control socket.
    NSPAWN_STATE=
    for _ in $(seq 90); do
        NSPAWN_STATE=$(timeout 90 nsenter -t "$LEADER" -a systemctl is-system-running --wait 2>/dev/null || true)
        [ -n "$NSPAWN_STATE" ] && break
        kill -0 "$NSPAWN_PID" 2>/dev/null || break
        sleep 1
    done
    case "$NSPAWN_STATE" in
        running | degraded) ;;
        *) skip "the container did not boot (systemctl is-system-running: '${NSPAWN_STATE:-no answer}'): $(tail -1 "$log")" ;;
    esac
}

nspawn_stop() {
    if [ -n "$LEADER" ] && kill -0 "$LEADER" 2>/dev/null; then
        nsenter -t "$LEADER" -a systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 50); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    fi
    [ -z "$NSPAWN_PID" ] || kill "$NSPAWN_PID" 2>/dev/null || true
    [ -z "$NSPAWN_PID" ] || wait "$NSPAWN_PID" 2>/dev/null || true
}

ct() { nsenter -t "$LEADER" -a env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
