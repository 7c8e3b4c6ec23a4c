#!/usr/bin/env bash
# systemd-e2e.sh — the README's install path, on a real systemd.
#
#   tests/ops/systemd-e2e.sh [PATH-TO-weixin-fcgi.deb [PATH-TO-SECOND.deb]]
#
# Builds (or reuses) a Debian 12 (bookworm) root with debootstrap, from the Debian mirror of this
# host's apt sources, with systemd, nginx-light and curl in it; cached under
# target/nspawn/bookworm-base, so only the first run downloads (about 2 minutes). Each run
# boots a fresh copy with systemd-nspawn (systemd 252 as PID 1, private network: only the
# container's own loopback), then does what README.md tells a user to do — `apt install` the
# .deb, edit /etc/weixin-fcgi/weixin-fcgi.toml, one `include` in nginx's server block, reload
# nginx — and checks:
#   package     socket enabled and listening, service not started, config 0640
#               root:weixin-fcgi-conf, man page installed
#   activation  the first request starts the service (Type=notify: READY=1), STATUS= counts
#   verify      a signed URL verification and a text message through nginx (`weixin-fcgi send`),
#               and a safe-mode (AES) message
#   reload      `systemctl reload` applies a change; a broken file fails the reload and the old
#               config keeps serving (same process)
#   restarts    ten `systemctl restart` in a row under a bounded load through nginx: every
#               request answered 200 with the reply, the socket never down
#   rss         VmRSS of the packaged service after 10,000 requests through nginx (printed)
#   broken      a broken config with a restart: systemd retries, then gives up at the start limit
#               (no retry loop forever), and `reset-failed` + a fixed file bring it back
#   idle        idle_exit: the service exits when idle, the socket stays, the next request
#               starts it again
#   late        a late exec rule: pending, the answer kept in the StateDirectory= (DynamicUser),
#               delivered on the next message after a restart
#   journal     no token, AES key or AppSecret anywhere in the journal
#   security    systemd-analyze security weixin-fcgi.service <= 1.0
#   upgrade     installing the second .deb (same package, higher version) under load: the
#               service restarts onto it, every request is answered, the socket stays
#   remove      `apt-get remove` stops the socket; `apt-get purge` removes /etc/weixin-fcgi
#
# Without .deb arguments it builds them (`cargo deb-static`, then the same binary repackaged
# as version <v>-2 for the upgrade). Needs root. Where a container cannot be built or booted it
# prints one SKIP line with the reason and exits 0; after a successful boot every problem is a
# FAIL. Prints "systemd-e2e: N passed, N failed" last; exit 1 on any failure.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$REPO/target/nspawn
BASE=$CACHE/bookworm-base
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,nginx-light,curl
START=$(date +%s)

PASS=0 FAIL=0
pass() { PASS=$((PASS + 1)); printf 'PASS  %-10s %s\n' "$1" "$2"; }
fail() { FAIL=$((FAIL + 1)); printf 'FAIL  %-10s %s\n' "$1" "$2"; }
skip() { printf 'SKIP  systemd-e2e: %s\n' "$*"; exit 0; }
note() { printf '      %-10s %s\n' "$1" "$2"; }
indent() { sed 's/^/           | /'; }

[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, systemd-nspawn)"

# --- tools ------------------------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "systemd-e2e: installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends "${need[@]}" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }; } >&2 ||
        skip "cannot install ${need[*]} with apt-get"
fi

# --- the .deb files ---------------------------------------------------------------------------
DEB=${1:-}
DEB2=${2:-}
if [ -z "$DEB" ]; then
    command -v cargo-deb >/dev/null || {
        echo "systemd-e2e: installing cargo-deb (cargo install cargo-deb --locked)" >&2
        cargo install --quiet --locked cargo-deb >&2
    }
    (cd "$REPO" && cargo deb-static --quiet >&2)
    DEB=$(ls -t "$REPO"/target/x86_64-unknown-linux-gnu/debian/weixin-fcgi_*_amd64.deb | head -1)
fi
[ -f "$DEB" ] || { echo "systemd-e2e: $DEB: no such file" >&2; exit 2; }
VERSION=$(dpkg-deb -f "$DEB" Version)
if [ -z "$DEB2" ]; then
    # The same files as a newer version: what an upgrade does to a running service is the test.
    DEB2=$CACHE/weixin-fcgi_${VERSION%-*}-99_amd64.deb
    rm -rf "$CACHE/repack" && mkdir -p "$CACHE/repack"
    dpkg-deb -R "$DEB" "$CACHE/repack/pkg"
    sed -i "s/^Version: .*/Version: ${VERSION%-*}-99/" "$CACHE/repack/pkg/DEBIAN/control"
    dpkg-deb --root-owner-group -Zxz -b "$CACHE/repack/pkg" "$DEB2" >/dev/null
    rm -rf "$CACHE/repack"
fi
VERSION2=$(dpkg-deb -f "$DEB2" Version)

# --- the cached Debian root, a booted copy ----------------------------------------------------
# shellcheck source=tests/ops/nspawn.sh
. "$REPO/tests/ops/nspawn.sh"
nspawn_base "$BASE" "$SUITE" "$INCLUDE" "$CACHE/debootstrap.log"
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
MACHINE=weixin-e2e-$$
cleanup() {
    nspawn_stop
    rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$RUN/root"
cp -a --reflink=auto "$BASE/." "$RUN/root/"
echo "$MACHINE" > "$RUN/root/etc/hostname"
mkdir -p "$RUN/root/root/e2e/upgrade"
cp "$DEB" "$RUN/root/root/e2e/weixin-fcgi_${VERSION}_amd64.deb"
cp "$DEB2" "$RUN/root/root/e2e/upgrade/weixin-fcgi_${VERSION2}_amd64.deb"
# A private network: the container's nginx listens on its own loopback only.
nspawn_boot "$RUN/root" "$MACHINE" "$RUN/nspawn.log"
state=$NSPAWN_STATE
note boot "$(ct systemctl --version | head -1) as PID 1 in $MACHINE, state $state, $(($(date +%s) - START)) s so far"

# From here on an unexpected failure of any command is a FAIL, with its line.
trap 'echo "FAIL  script     line $LINENO: \"$BASH_COMMAND\" exited $?"; echo "systemd-e2e: $PASS passed, $((FAIL + 1)) failed"' ERR

# --- helpers ----------------------------------------------------------------------------------
CONFIG=/etc/weixin-fcgi/weixin-fcgi.toml
# Secrets that must never reach the journal (checked at the end).
TOKEN=e2eToken7f3a9c
AES_KEY=$(python3 -c 'import random,string; r=random.Random(7); print("".join(r.choice(string.ascii_letters+string.digits) for _ in range(43)))')
APP_ID=wx7e2e0000000001
APP_SECRET=e2eAppSecret5d1b7c

write_config() { # write_config REPLY_PREFIX [EXTRA_GLOBAL_LINE [RULE_TABLES]]
    # The rules: an echo rule with REPLY_PREFIX, unless RULE_TABLES are given.
    local rules=${3:-"[[account.rule]]
name = \"echo\"
msg_type = \"text\"
reply = { type = \"text\", content = \"$1 {Content}\" }"}
    ct sh -c "cat > $CONFIG" <<EOF
# written by tests/ops/systemd-e2e.sh, as a user edits the packaged file
status_path = "/weixin-status"
${2:-}
[[account]]
name = "e2e"
path = "/weixin"
token = "$TOKEN"
app_id = "$APP_ID"
aes_key = "$AES_KEY"
app_secret = "$APP_SECRET"

$rules
EOF
}
send() { # send ARGS...: weixin-fcgi send through the container's nginx, in safe mode unless --plain
    # (credentials given, not read from the config: some steps break the config on purpose)
    ct weixin-fcgi send --token "$TOKEN" --app-id "$APP_ID" --aes-key "$AES_KEY" --path /weixin \
        --to http://127.0.0.1/ "$@" 2>&1 || true
}
journal_has() { # journal_has TEXT: the service's journal contains TEXT
    local j
    j=$(ct journalctl -u weixin-fcgi -o cat --no-pager)
    [[ $j == *"$1"* ]]
}
prop() { ct systemctl show -P "$2" "$1"; }
main_pid() { prop weixin-fcgi.service MainPID; }

# make_load NAME BATCHES: curl configs /root/e2e/NAME.<i>.load of 200 signed text messages each.
BATCH=200
make_load() { python3 "$REPO/tests/ops/wechat-load.py" "$RUN/root/root/e2e/$1" "$2" "$BATCH" "$TOKEN"; }
# run_load NAME BATCHES: the batches in order through nginx (4 requests at a time), until all
# are done or $RUN/stop exists; one "STATUS BYTES" line per request in $RUN/NAME.out. Prints
# the number of batches run. Bounded: BATCHES x 200 requests, 60 s per batch at most.
run_load() {
    local i=0
    : > "$RUN/$1.out"
    while [ "$i" -lt "$2" ] && [ ! -e "$RUN/stop" ]; do
        ct timeout 60 curl --parallel --parallel-max 4 -K "/root/e2e/$1.$i.load" \
            >> "$RUN/$1.out" 2>> "$RUN/$1.err" || true
        i=$((i + 1))
    done
    echo "$i"
}
# check_load NAME COUNT: COUNT lines, all "200 <size of the echo reply>".
check_load() {
    local got
    got=$(sort "$RUN/$1.out" | uniq -c | sed 's/^ *//')
    if [ "$(wc -l < "$RUN/$1.out")" -eq "$2" ] && [ "$(printf '%s\n' "$got" | wc -l)" -eq 1 ] &&
        [[ $got == "$2 200 "* ]] && [ "${got##* }" -gt 100 ]; then
        return 0
    fi
    printf '%s\n' "$got" | head -5 | indent
    head -3 "$RUN/$1.err" 2>/dev/null | indent
    return 1
}
# under_load NAME COMMAND...: runs COMMAND while batches of requests go through nginx; the load
# starts before and stops after it. Sets LOAD_COUNT (requests sent) and LOAD_SPANNED (yes when
# the load was still running as COMMAND ended).
MAX_BATCHES=100
under_load() {
    local name=$1 batches load
    shift
    make_load "$name" "$MAX_BATCHES"
    rm -f "$RUN/stop"
    run_load "$name" "$MAX_BATCHES" > "$RUN/$name.batches" &
    load=$!
    sleep 0.5
    "$@"
    LOAD_SPANNED=no
    kill -0 "$load" 2>/dev/null && LOAD_SPANNED=yes
    touch "$RUN/stop"
    wait "$load"
    batches=$(cat "$RUN/$name.batches")
    LOAD_COUNT=$((batches * BATCH))
    [ "$batches" -lt "$MAX_BATCHES" ] || LOAD_SPANNED=no
}

# --- 1. install: what README.md says ------------------------------------------------------------
out=$(ct env DEBIAN_FRONTEND=noninteractive sh -c 'cd /root/e2e && apt install -y -q ./weixin-fcgi_*.deb' 2>&1) ||
    { fail package "apt install ./weixin-fcgi_*.deb failed:"; printf '%s\n' "$out" | tail -15 | indent; }
modes=$(ct stat -c '%a %U:%G' /etc/weixin-fcgi "$CONFIG" | tr '\n' ' ')
if [ "$(ct systemctl is-enabled weixin-fcgi.socket)" = enabled ] &&
    [ "$(ct systemctl is-active weixin-fcgi.socket)" = active ] &&
    [ "$(ct systemctl is-active weixin-fcgi.service || true)" = inactive ] &&
    [ "$modes" = "750 root:weixin-fcgi-conf 640 root:weixin-fcgi-conf " ] &&
    ct test -f /usr/share/man/man8/weixin-fcgi.8.gz && ct test -f /etc/nginx/snippets/weixin.conf &&
    ct test -f /etc/nginx/conf.d/weixin-upstream.conf; then
    pass package "apt install ./weixin-fcgi_*.deb ($VERSION): socket enabled+listening, service idle, config $modes"
else
    fail package "after install: socket $(ct systemctl is-enabled weixin-fcgi.socket)/$(ct systemctl is-active weixin-fcgi.socket), service $(ct systemctl is-active weixin-fcgi.service), config $modes"
fi

# The packaged binary has Redis support: a config with shared_state passes the check (Redis
# itself is tested in tests/ops/shared-state-nspawn.sh with the same binary).
write_config "You said:" 'shared_state = "redis://127.0.0.1:6379/0"'
if out=$(ct weixin-fcgi check --config "$CONFIG" 2>&1) && grep -q 'redis://127.0.0.1:6379/0' <<<"$out"; then
    pass package "the packaged binary accepts shared_state (built with tls,redis)"
else
    fail package "weixin-fcgi check with shared_state:"
    indent <<<"$out"
fi

# README.md step 2: edit the config, check it.
write_config "You said:"
ct weixin-fcgi check --config "$CONFIG" > /dev/null
# The status page's location, uncommented as README.md says.
ct sed -i '/^#location = \/weixin-status {/,/^#}/s/^#//' /etc/nginx/snippets/weixin.conf
# Step 3: the one line README.md adds to the server {} block, then nginx -t and a reload.
ct sed -i 's|^\(\s*server_name _;\)|\1\n\tinclude snippets/weixin.conf;|' /etc/nginx/sites-enabled/default
ct nginx -t -q && ct systemctl reload nginx

# --- 2. socket activation, READY and STATUS ---------------------------------------------------
before=$(ct systemctl is-active weixin-fcgi.service || true)
# A request sent right after the reload can still reach nginx's old workers, which have no such
# location (404): wait for the new ones. The first to get through, unsigned, is refused with 403
# by weixin-fcgi, which it started.
code=
for _ in $(seq 50); do
    code=$(ct curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/weixin)
    [ "$code" = 403 ] && break
    sleep 0.1
done
after=$(ct systemctl is-active weixin-fcgi.service || true)
# Step 4, as README.md gives it.
out=$(ct weixin-fcgi send --config "$CONFIG" --to http://127.0.0.1/ verify 2>&1 || true)
if [ "$before" = inactive ] && [ "$code" = 403 ] && [ "$after" = active ] && [[ $out == *"verify ok"* ]] &&
    [ "$(prop weixin-fcgi.service Type)" = notify ]; then
    pass activation "first request started the service (Type=notify: active only after READY=1): $before -> $after; signed verify ok"
else
    fail activation "service $before -> $after, unsigned request $code, send verify:"
    printf '%s\n' "$out" | indent
fi
sleep 1.2 # the main loop publishes STATUS= once a second
status=$(prop weixin-fcgi.service StatusText)
if [[ $status =~ ^serving,\ [1-9][0-9]*\ requests$ ]]; then
    pass status "STATUS=\"$status\""
else
    fail status "StatusText '$status', expected 'serving, N requests'"
fi

# --- 3. a signed verify and messages through nginx ----------------------------------------------
out=$(send --plain text "hello e2e")
out2=$(send text "hello safe mode")
if [[ $out == *"Content You said: hello e2e"* ]] && [[ $out2 == *"mode safe (reply signature ok, decrypted)"* ]] &&
    [[ $out2 == *"Content You said: hello safe mode"* ]]; then
    pass verify "plain and safe-mode text messages answered through nginx (reply signature and AES checked)"
else
    fail verify "send text:"
    printf '%s\n%s\n' "$out" "$out2" | indent
fi

# --- 4. reload applies a change; a broken file keeps the old config ------------------------------
pid=$(main_pid)
write_config "Reloaded:"
ct systemctl reload weixin-fcgi
out=$(send --plain text one)
if [[ $out == *"Content Reloaded: one"* ]] && [ "$(main_pid)" = "$pid" ]; then
    pass reload "systemctl reload: the next request uses the new template, same process $pid"
else
    fail reload "after reload (pid $pid -> $(main_pid)):"
    printf '%s\n' "$out" | indent
fi
ct sh -c "printf '[[account]]\npath = \"/weixin\"\ntoken = \"$TOKEN\"\nbogus_key = 1\n' > $CONFIG"
if ct systemctl reload weixin-fcgi >/dev/null 2>&1; then
    fail reload "systemctl reload of a broken file succeeded"
fi
out=$(send --plain text two)
if [[ $out == *"Content Reloaded: two"* ]] && [ "$(main_pid)" = "$pid" ] &&
    journal_has 'bogus_key: unknown key'; then
    pass reload "a broken file fails the reload (journal names file, line and key); the old config keeps serving"
else
    fail reload "after a broken reload (pid $pid -> $(main_pid)):"
    printf '%s\n' "$out" | indent
fi
write_config "You said:"
ct systemctl reload weixin-fcgi

# --- 5. ten quick restarts under a bounded load -----------------------------------------------
pid=$(main_pid)
restarts_ok=0
ten_restarts() {
    local t0
    t0=$(date +%s.%N)
    for _ in $(seq 10); do
        ct systemctl restart weixin-fcgi && restarts_ok=$((restarts_ok + 1))
    done
    RESTART_SECONDS=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
}
under_load restart ten_restarts
if [ "$restarts_ok" -eq 10 ] && [ "$LOAD_SPANNED" = yes ] && check_load restart "$LOAD_COUNT" &&
    [ "$(ct systemctl is-active weixin-fcgi.socket)" = active ] &&
    [ "$(prop weixin-fcgi.service NRestarts)" = 0 ] && [ "$(main_pid)" != "$pid" ]; then
    pass restarts "10 restarts in a row ($RESTART_SECONDS s) during $LOAD_COUNT requests: all 200 with the reply, socket active"
else
    fail restarts "$restarts_ok/10 restarts ok, load spanned them: $LOAD_SPANNED, socket $(ct systemctl is-active weixin-fcgi.socket), result $(prop weixin-fcgi.socket Result)"
fi

# --- 6. RSS of the packaged service after 10,000 requests ---------------------------------------
make_load rss 50
rm -f "$RUN/stop"
ct systemctl restart weixin-fcgi
t0=$(date +%s.%N)
run_load rss 50 >/dev/null
t1=$(date +%s.%N)
pid=$(main_pid)
rss=$(ct sed -n 's/^\(VmRSS\|VmHWM\|RssAnon\):\s*//p' "/proc/$pid/status" | tr -s ' \n' ' ')
if check_load rss 10000; then
    pass rss "10,000 requests through nginx in $(python3 -c "print(round($t1 - $t0, 1))") s; packaged service VmRSS/VmHWM/RssAnon: $rss"
else
    fail rss "10,000 requests: not all answered"
fi

# --- 6b. the status page after those 10,000 requests ------------------------------------------
page=$(ct weixin-fcgi status 2>&1 || true)
om=$(ct curl -s 'http://127.0.0.1/weixin-status?openmetrics' || true)
denied=$(ct curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.2 http://127.0.0.1/weixin-status || true)
if [[ $page == *$'\nrequests e2e: 200 10000\n'* ]] &&
    [[ $om == *'weixin_fcgi_requests_total{account="e2e",status="200"} 10000'$'\n'* ]] &&
    [[ $om == *$'\n# EOF\n' || $om == *$'\n# EOF' ]] && [ "$denied" = 403 ]; then
    pass status "weixin-fcgi status (socket) and /weixin-status?openmetrics (nginx) count the 10,000 requests; 127.0.0.2 gets $denied"
    printf '%s\n' "$page" | indent
else
    fail status "status page after 10,000 requests (from 127.0.0.2: $denied):"
    printf '%s\n' "$page" | indent
fi

# --- 7. a broken config with a restart gives up at the start limit ------------------------------
ct sh -c "printf 'this is not toml\n' > $CONFIG"
ct systemctl restart weixin-fcgi >/dev/null 2>&1 && fail broken "restart with a broken config succeeded"
# systemd retries (Restart=on-failure) until the start limit; then the service is failed and
# the socket with it (service-start-limit-hit), and nothing retries any more.
t0=$(date +%s)
result=
for _ in $(seq 150); do
    result=$(prop weixin-fcgi.socket Result)
    [ "$result" = service-start-limit-hit ] && break
    sleep 0.5
done
gave_up=$(($(date +%s) - t0))
n1=$(prop weixin-fcgi.service NRestarts)
sleep 3
n2=$(prop weixin-fcgi.service NRestarts)
if [ "$result" = service-start-limit-hit ] && [ "$n1" = "$n2" ] && [ "$n1" -gt 0 ] &&
    [ "$(prop weixin-fcgi.service ActiveState)" = failed ] && journal_has 'Start request repeated too quickly'; then
    pass broken "broken config: $n1 automatic retries, then the start limit after ${gave_up} s, and no more retries"
else
    fail broken "broken config: socket result '$result', NRestarts $n1 then $n2 (3 s later), service $(prop weixin-fcgi.service ActiveState)"
fi
write_config "You said:"
ct systemctl reset-failed weixin-fcgi.service weixin-fcgi.socket
ct systemctl start weixin-fcgi.socket
out=$(send --plain text back)
if [[ $out == *"Content You said: back"* ]]; then
    pass broken "fixed file + systemctl reset-failed weixin-fcgi.service weixin-fcgi.socket: serving again"
else
    fail broken "after the fix:"
    printf '%s\n' "$out" | indent
fi

# --- 8. idle exit and re-activation ---------------------------------------------------------
# idle_exit applies at a reload (no restart needed).
send --plain text before-idle >/dev/null
write_config "You said:" "idle_exit = 2"
ct systemctl reload weixin-fcgi
send --plain text idle >/dev/null
pid=$(main_pid)
state=
for _ in $(seq 40); do
    state=$(ct systemctl is-active weixin-fcgi.service || true)
    [ "$state" = inactive ] && break
    sleep 0.25
done
sock=$(ct systemctl is-active weixin-fcgi.socket)
out=$(send --plain text again)
if [ "$state" = inactive ] && [ "$sock" = active ] && [[ $out == *"Content You said: again"* ]] &&
    [ "$(main_pid)" != "$pid" ] && journal_has 'idle for 2s: exiting'; then
    pass idle "idle_exit = 2 set by a reload: process $pid exited, socket stayed active, the next request started $(main_pid)"
else
    fail idle "service after idle: '$state', socket '$sock', next request:"
    printf '%s\n' "$out" | indent
fi
write_config "You said:"
ct systemctl restart weixin-fcgi

# --- 8b. a late answer kept in the state directory survives a restart --------------------------
# An exec rule slower than WeChat's attempt (wechat_attempt_ms = 1000 keeps the test short): the
# request gets `pending`, the answer is kept for the user in the unit's StateDirectory= (with
# DynamicUser=: /var/lib/private/weixin-fcgi, given to each run's new UID), and after a restart,
# under another dynamic UID, the user's next message gets it.
write_config "" "wechat_attempt_ms = 1000" '[[account.rule]]
name = "slow"
msg_type = "text"
reply = { type = "exec", command = ["/bin/sh", "-c", "sleep 3; echo \"late: $WX_Content\""], late = "next_message", late_timeout_ms = 10000 }'
ct systemctl restart weixin-fcgi
first=$(send --plain text question)
state_file=/var/lib/private/weixin-fcgi/late-answers
for _ in $(seq 40); do
    ct test -s "$state_file" && break
    sleep 0.25
done
dir_mode=$(ct stat -c '%a' /var/lib/private/weixin-fcgi 2>&1 || true)
pid=$(main_pid)
ct systemctl restart weixin-fcgi
second=$(send --plain text hello)
if [[ $first == *"Content 正在思考"* ]] && ct test -s "$state_file" && [ "$dir_mode" = 700 ] &&
    [[ $second == *"Content late: question"* ]] && [ "$(main_pid)" != "$pid" ]; then
    pass late "late rule: pending, the answer kept in $state_file (dir 0700), delivered after a restart ($pid -> $(main_pid))"
else
    fail late "first reply, state dir mode '$dir_mode', reply after the restart:"
    printf '%s\n%s\n' "$first" "$second" | indent
    ct ls -la /var/lib/private/weixin-fcgi 2>&1 | indent
fi
write_config "You said:"
ct systemctl restart weixin-fcgi

# --- 9. no secrets in the journal ----------------------------------------------------------------
journal=$(ct journalctl -o cat --no-pager)
lines=$(printf '%s\n' "$journal" | grep -c 'weixin-fcgi\|account=e2e' || true)
leaks=$(printf '%s\n' "$journal" | grep -F -e "$TOKEN" -e "$AES_KEY" -e "$APP_SECRET" || true)
if [ -z "$leaks" ] && [ "$lines" -gt 10 ]; then
    pass journal "no token, AES key or AppSecret in the journal ($lines weixin-fcgi lines)"
else
    fail journal "secrets in the journal:"
    printf '%s\n' "$leaks" | head -5 | indent
fi
# ExecStartPre= runs `check --quiet`: dozens of starts so far, and not one summary in the journal.
starts=$(printf '%s\n' "$journal" | grep -c '^weixin-fcgi .* serving on ' || true)
summaries=$(printf '%s\n' "$journal" | grep -c '^OK: /etc/weixin-fcgi/weixin-fcgi.toml\|^account e2e: path' || true)
if [ "$starts" -gt 10 ] && [ "$summaries" -eq 0 ]; then
    pass journal "$starts starts, each after \`check --quiet\`: no rule list in the journal"
else
    fail journal "$starts starts, $summaries check summaries in the journal"
fi

# --- 10. sandbox score ------------------------------------------------------------------------
level=$(ct systemd-analyze security weixin-fcgi.service 2>/dev/null |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 1.0) }'; then
    pass security "systemd-analyze security weixin-fcgi.service: $level (limit 1.0)"
else
    fail security "systemd-analyze security: '${level:-no level}' (limit 1.0)"
fi

# --- 11. upgrade under load ---------------------------------------------------------------------
send --plain text warm >/dev/null
pid=$(main_pid)
upgrade() {
    ct env DEBIAN_FRONTEND=noninteractive sh -c 'cd /root/e2e/upgrade && apt install -y -q ./weixin-fcgi_*.deb' \
        > "$RUN/upgrade.log" 2>&1 || { fail upgrade "apt-get install of $VERSION2 failed:"; tail -10 "$RUN/upgrade.log" | indent; }
}
under_load upgrade upgrade
installed=$(ct dpkg-query -W -f '${Version}' weixin-fcgi)
if [ "$installed" = "$VERSION2" ] && [ "$LOAD_SPANNED" = yes ] && check_load upgrade "$LOAD_COUNT" &&
    [ "$(main_pid)" != "$pid" ] && [ "$(ct systemctl is-active weixin-fcgi.socket)" = active ] &&
    [ "$(ct stat -c '%a %G' "$CONFIG")" = "640 weixin-fcgi-conf" ]; then
    pass upgrade "$VERSION -> $VERSION2 during $LOAD_COUNT requests: all answered, service restarted ($pid -> $(main_pid)), socket kept"
else
    fail upgrade "installed '$installed', load spanned it: $LOAD_SPANNED, pid $pid -> $(main_pid), socket $(ct systemctl is-active weixin-fcgi.socket)"
fi

# --- 12. remove and purge -----------------------------------------------------------------------
ct env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q weixin-fcgi >/dev/null 2>&1
sock=$(ct systemctl is-active weixin-fcgi.socket || true)
svc=$(ct systemctl is-active weixin-fcgi.service || true)
if [ "$sock" = inactive ] && [ "$svc" = inactive ] && ct test -f "$CONFIG" && ! ct test -e /usr/bin/weixin-fcgi; then
    pass remove "apt-get remove: socket and service stopped, config kept"
else
    fail remove "after remove: socket '$sock', service '$svc'"
fi
# The admin takes the include out before purging (the snippet goes with the package).
ct sed -i '/include snippets\/weixin.conf;/d' /etc/nginx/sites-enabled/default
ct env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q weixin-fcgi >/dev/null 2>&1
if ! ct test -e /etc/weixin-fcgi && ! ct dpkg-statoverride --list /etc/weixin-fcgi >/dev/null &&
    ! ct test -e /etc/nginx/snippets/weixin.conf && ct nginx -t -q 2>/dev/null; then
    pass remove "apt-get purge: /etc/weixin-fcgi, its permission overrides and the nginx files are gone; nginx -t ok"
else
    fail remove "after purge: $(ct ls -la /etc/weixin-fcgi 2>&1 | head -3 | tr '\n' ' ')"
fi

note time "$(($(date +%s) - START)) s in all"
echo "systemd-e2e: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
