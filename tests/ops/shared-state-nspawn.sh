#!/usr/bin/env bash
# shared-state-nspawn.sh — weixin-fcgi reaching Redis from its hardened unit, on a real systemd.
#
#   tests/ops/shared-state-nspawn.sh [PATH-TO-weixin-fcgi built with --features redis (default: tls,redis as the package)]
#
# Builds (or reuses) a Debian 12 root with debootstrap (systemd, redis-server), cached under
# target/nspawn/bookworm-redis; boots a fresh copy with systemd-nspawn (systemd as PID 1, a
# private network: only the container's own loopback, where Debian's redis-server listens);
# installs systemd/weixin-fcgi.{socket,service} as the README does, the binary at the unit's
# ExecStart path, and a config with `shared_state` and one `forward` rule (its backend is
# absent: the fallback answers, but the message is claimed and answered in Redis all the same).
# Then, with messages sent to the socket by `weixin-fcgi send` inside the container:
#   no-dropin   the unit as shipped (no TCP/IP): answered, and the journal names Redis and why
#   tcp         with systemd/shared-state.conf: the message's answer appears in Redis with a TTL;
#               systemd-analyze security <= 1.0
#   unix        shared_state = redis+unix:// and a drop-in with SupplementaryGroups=redis (no
#               network): the key appears; exposure as without drop-in
#   unix-group  the same without the group: answered, the journal says "Permission denied"
# Needs root; where a container cannot be built or booted it prints one SKIP line and exits 0.
# Prints "shared-state-nspawn: N passed, N failed" last; exit 1 on any failure.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$REPO/target/nspawn
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,redis-server
BASE=$CACHE/$SUITE-redis

PASS=0 FAIL=0
pass() { PASS=$((PASS + 1)); printf 'PASS  %-10s %s\n' "$1" "$2"; }
fail() { FAIL=$((FAIL + 1)); printf 'FAIL  %-10s %s\n' "$1" "$2"; }
skip() { printf 'SKIP  shared-state-nspawn: %s\n' "$*"; exit 0; }
indent() { sed 's/^/           | /'; }

[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends "${need[@]}" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }; } >&2 ||
        skip "cannot install ${need[*]} with apt-get"
fi

BINARY=${1:-}
if [ -z "$BINARY" ]; then
    # The package's features: after tests/ops/systemd-e2e.sh this is the .deb's binary.
    (cd "$REPO" && cargo release-static --quiet --features tls,redis >&2)
    BINARY=$REPO/target/x86_64-unknown-linux-gnu/release/weixin-fcgi
fi
[ -x "$BINARY" ] || { echo "shared-state-nspawn: $BINARY is not executable" >&2; exit 2; }

# --- the cached Debian root -------------------------------------------------------------------
# shellcheck source=tests/ops/nspawn.sh
. "$REPO/tests/ops/nspawn.sh"
nspawn_base "$BASE" "$SUITE" "$INCLUDE" "$CACHE/debootstrap-redis.log"

# --- a fresh copy with the units, the binary, the config --------------------------------------
RUN=$(mktemp -d "$CACHE/redis-run.XXXXXX")
ROOT=$RUN/root
cleanup() {
    nspawn_stop
    rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$ROOT"
cp -a --reflink=auto "$BASE/." "$ROOT/"
echo "weixin-redis" > "$ROOT/etc/hostname"
EXEC=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$REPO/systemd/weixin-fcgi.service" | head -1)
install -D -m 0755 "$BINARY" "$ROOT$EXEC"
UNITS=$ROOT/etc/systemd/system
DROPINS=$UNITS/weixin-fcgi.service.d
cp "$REPO/systemd/weixin-fcgi.socket" "$REPO/systemd/weixin-fcgi.service" "$UNITS/"
mkdir -p "$UNITS/sockets.target.wants" "$DROPINS" "$ROOT/etc/sysusers.d" "$ROOT/etc/tmpfiles.d"
ln -s ../weixin-fcgi.socket "$UNITS/sockets.target.wants/weixin-fcgi.socket"
cp "$REPO/systemd/weixin-fcgi.sysusers" "$ROOT/etc/sysusers.d/weixin-fcgi.conf"
cp "$REPO/systemd/weixin-fcgi.tmpfiles" "$ROOT/etc/tmpfiles.d/weixin-fcgi.conf"
# Debian's redis-server with its Unix socket, for the group that may use it.
sed -i -e 's|^# *unixsocket .*|unixsocket /run/redis/redis-server.sock|' \
    -e 's|^# *unixsocketperm .*|unixsocketperm 770|' "$ROOT/etc/redis/redis.conf"
CONFIG=/etc/weixin-fcgi/weixin-fcgi.toml
write_config() { # write_config SHARED_STATE
    mkdir -p "$ROOT/etc/weixin-fcgi"
    cat > "$ROOT$CONFIG" <<EOF
shared_state = "$1"
[[account]]
name = "e2e"
path = "/weixin"
token = "sharedE2eToken"
[[account.rule]]
name = "bot"
reply = { type = "forward", url = "http://127.0.0.1:9/bot", timeout_ms = 1000, fallback = { type = "text", content = "fallback reply" } }
EOF
}
write_config "redis://127.0.0.1:6379/0"

nspawn_boot "$ROOT" "weixin-redis-$$" "$RUN/nspawn.log"
trap 'echo "FAIL  script     line $LINENO: \"$BASH_COMMAND\" exited $?"; echo "shared-state-nspawn: $PASS passed, $((FAIL + 1)) failed"' ERR
ct systemctl is-active --quiet redis-server.service || { fail boot "redis-server is not running"; }
printf '      %-10s %s, %s\n' boot "$(ct systemctl --version | head -1)" "state $NSPAWN_STATE"

# --- helpers ----------------------------------------------------------------------------------
N=0
send() { # send: a new text message to the socket; prints the reply's Content
    N=$((N + 1))
    ct "$EXEC" send -c "$CONFIG" --to /run/weixin-fcgi.sock text "message $N" 2>&1 |
        sed -n 's/^Content //p' || true
}
keys() { ct redis-cli --scan --pattern 'weixin-fcgi:e2e:answer:*' | sort; }
CURSOR=
journal() { # the service's journal since the last restart_with
    ct journalctl -u weixin-fcgi -o cat --no-pager ${CURSOR:+--after-cursor="$CURSOR"}
}
restart_with() { # restart_with DROPIN...: these drop-ins only; the next message starts the service
    rm -f "$DROPINS"/*.conf
    for d in "$@"; do cp "$d" "$DROPINS/"; done
    ct systemctl daemon-reload
    ct systemctl stop weixin-fcgi.service 2>/dev/null
    CURSOR=$(ct journalctl -n 0 --show-cursor -o cat | sed -n 's/^-- cursor: //p')
}
exposure() {
    ct systemd-analyze security weixin-fcgi.service 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
# check_journal NAME WANT: a message is answered; the journal says WANT.
check_journal() {
    local name=$1 want=$2 reply j
    reply=$(send)
    j=$(journal)
    if [ "$reply" = "fallback reply" ] && [[ $j == *"$want"* ]]; then
        pass "$name" "answered (\"$reply\"); journal: …$want…"
    else
        fail "$name" "reply '$reply', journal lacks '$want':"
        printf '%s\n' "$j" | tail -5 | indent
    fi
}
# check_shared NAME: a message is answered and its key appears in Redis with a TTL. On a busy
# machine the first connection can take longer than the 200 ms weixin-fcgi gives Redis; then
# that message is answered from memory, Redis is tried again a second later, and so are we
# (at most 5 messages).
check_shared() {
    local name=$1 before after reply new ttl tries=0 why=
    while [ "$tries" -lt 5 ]; do
        tries=$((tries + 1))
        before=$(keys)
        reply=$(send)
        after=$(keys)
        new=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | grep . || true)
        [ -n "$new" ] && break
        why=$(journal | sed -n 's/.*unavailable (\([^)]*\)).*/\1/p' | tail -1)
        sleep 1.2
    done
    ttl=$( [ -n "$new" ] && ct redis-cli pttl "$new" || echo none)
    if [ "$reply" = "fallback reply" ] && [ "$(printf '%s\n' "$new" | grep -c .)" -eq 1 ] &&
        [ "$ttl" -gt 0 ] 2>/dev/null; then
        pass "$name" "answered; $new in Redis, TTL $ttl ms; exposure $(exposure)${why:+ (message $tries; before: $why)}"
    else
        fail "$name" "reply '$reply', new keys '$new', TTL '$ttl' after $tries messages:"
        journal | tail -5 | indent
    fi
}

# --- checks -----------------------------------------------------------------------------------
restart_with
check_journal no-dropin \
    "shared state: Redis redis://127.0.0.1:6379/0 unavailable (Address family not supported by protocol"

restart_with "$REPO/systemd/shared-state.conf"
check_shared tcp
level=$(exposure)
if awk -v l="$level" 'BEGIN { exit !(l != "" && l <= 1.0) }'; then
    pass security "with shared-state.conf: exposure $level (limit 1.0)"
else
    fail security "with shared-state.conf: exposure '$level' above 1.0"
fi

write_config "redis+unix:///run/redis/redis-server.sock"
printf '[Service]\nSupplementaryGroups=redis\n' > "$RUN/redis-socket.conf"
restart_with "$RUN/redis-socket.conf"
check_shared unix
restart_with
check_journal unix-group \
    "shared state: Redis redis+unix:///run/redis/redis-server.sock unavailable (Permission denied"

trap - ERR
echo "shared-state-nspawn: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
