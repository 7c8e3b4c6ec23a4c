#!/usr/bin/env bash
# benches/run.sh — weixin-fcgi against the usual ways of answering WeChat callbacks, one command:
#
#     bash benches/run.sh
#
# On a fresh Debian (12) machine, as root: installs what is missing with apt-get (nginx-light, wrk,
# libfcgi-dev, libfcgi-bin, gcc, php-fpm, php-xml, python3-flask, gunicorn, python3-venv,
# golang-go, valgrind, curl, openssl), puts wechatpy (not packaged by Debian) from PyPI into a venv
# under target/bench/venv, builds the alternatives from benches/alt/, builds weixin-fcgi with
# `cargo release-static` unless $WEIXIN_FCGI_BIN is given, and runs everything on 127.0.0.1 only.
# Note: installing nginx / php-fpm on a systemd machine also starts Debian's own services (idle).
#
# Targets (every one behind its own nginx instance with identical settings: 1 worker process,
# access_log off, 127.0.0.1:<free port>, location = /weixin, temp prefix under target/bench):
#   nginx-return           nginx answers `return 200 '<xml>…'` itself: the limit of the nginx path.
#   floor                  do-nothing FastCGI responder in C on libfcgi (benches/alt/floor.c, one
#                          process): reads the body, writes a fixed reply, verifies nothing. The
#                          floor of the nginx→FastCGI hop; "ratio" is req/s relative to it.
#   weixin-fcgi-keepalive  $WEIXIN_FCGI_BIN via `fastcgi_pass unix:` with the repo's
#   weixin-fcgi            nginx/weixin.conf included verbatim (inline fallback if it does not exist
#                          yet); upstream weixin_fcgi generated with `keepalive N` (N from
#                          nginx/weixin-upstream.conf, default 8) and without it.
#   php-fpm                Debian's php-fpm, static pool of 2, benches/alt/callback.php (signature +
#                          SimpleXML + reply), the classic WeChat sample way.
#   flask-wechatpy         Flask + wechatpy (check_signature, parse_message, TextReply) under
#                          gunicorn, 2 sync workers, behind proxy_pass (benches/alt/flask_app.py).
#   go-nethttp             Go net/http + crypto/sha1 + encoding/xml, standard library only, behind
#                          proxy_pass (benches/alt/main.go).
# Every real target is checked with curl before it is loaded: a signed POST with fresh random
# Content must be echoed ("You said: …"), and the same POST with a wrong signature must not get 200.
# A target that fails its check is not loaded and is reported as failed.
#
# Load: wrk, 1 thread, 32 connections, --latency, benches/post.lua POSTs one signed text message
# (fixed timestamp — targets run without a timestamp window), a warm-up run, then the measured run.
# Targets are interleaved per round (odd rounds in order, even rounds reversed). RSS: sum of VmRSS of
# the target's whole process tree (benches/rss.py), idle before load and peak during warm-up+load
# (sampled every 100 ms); for nginx-return it is nginx's own RSS (master+worker).
#
# Instructions per request (independent of machine noise): the floor and weixin-fcgi (plaintext
# text message; safe-mode too if the binary accepts app_id/aes_key) run under
# `valgrind --tool=callgrind` on a Unix socket, fed by `cgi-fcgi -bind -connect` (no nginx) with
# the params nginx's fastcgi_params would send. After N1 requests and again after N2 requests in
# total, `callgrind_control -d` dumps the counters; Ir/request = (Ir(N2) − Ir(N1)) / (N2 − N1), so
# start-up cost cancels.
#
# Output: benches/RESULTS.md (tables per round and median over rounds, instructions/request,
# machine, versions), benches/results.json (all figures), benches/results.svg (req/s and peak RSS
# per target, drawn by benches/chart.py). Raw logs: target/bench/run-<date>/.
#
# Environment (defaults):
#   BENCH_SECONDS=10      measured seconds per target per round
#   BENCH_ROUNDS=2        rounds
#   BENCH_WARMUP=2        warm-up seconds before each measured run (0 = none)
#   BENCH_CONNECTIONS=32  wrk connections (1 wrk thread)
#   BENCH_TARGETS="nginx-return floor weixin-fcgi-keepalive weixin-fcgi php-fpm flask-wechatpy go-nethttp"
#   BENCH_CALLGRIND=1     0 skips the instructions/request measurement
#   BENCH_CG_N1=200 BENCH_CG_N2=1200
#   BENCH_SAFE=1          0 skips the safe-mode instructions/request figure
#   BENCH_OUT=benches     where RESULTS.md, results.json, results.svg are written
#   WEIXIN_FCGI_BIN       the responder binary (default:
#                         target/x86_64-unknown-linux-gnu/release/weixin-fcgi, built with
#                         `cargo release-static`); the target is skipped if it is missing or
#                         does not come up. CLI: weixin-fcgi --config FILE --listen /path/to.sock
# A default run (7 targets × 2 rounds × ~15 s, plus callgrind) takes about 6–8 minutes on 2 cores
# once everything is installed and built.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/benches
ALT=$BENCH_DIR/alt
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-32}
BENCH_TARGETS=${BENCH_TARGETS:-nginx-return floor weixin-fcgi-keepalive weixin-fcgi php-fpm flask-wechatpy go-nethttp}
BENCH_CALLGRIND=${BENCH_CALLGRIND:-1}
BENCH_CG_N1=${BENCH_CG_N1:-200}
BENCH_CG_N2=${BENCH_CG_N2:-1200}
BENCH_SAFE=${BENCH_SAFE:-1}
BENCH_OUT=${BENCH_OUT:-$BENCH_DIR}

WORK=$ROOT/target/bench
BUILD=$WORK/build
VENV=$WORK/venv
RUN=$WORK/run-$(date +%Y%m%d-%H%M%S)
RUN_REL=${RUN#"$ROOT"/} # for notes in RESULTS.md
PY=/usr/bin/python3

TOKEN=benchtoken
TS=1700000000
NONCE=benchnonce
OPENID=oBenchUser
CONTENT='hello bench 你好'
AES_KEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE
APP_ID=wx0123456789abcdef

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in BENCH_SECONDS BENCH_ROUNDS BENCH_WARMUP BENCH_CONNECTIONS BENCH_CG_N1 BENCH_CG_N2; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((BENCH_SECONDS >= 1 && BENCH_SECONDS <= 600)) || die "BENCH_SECONDS must be 1..600"
((BENCH_ROUNDS >= 1 && BENCH_ROUNDS <= 20)) || die "BENCH_ROUNDS must be 1..20"
((BENCH_CG_N2 > BENCH_CG_N1)) || die "BENCH_CG_N2 must be greater than BENCH_CG_N1"

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything we start runs in its own session (setsid) so that the whole
# tree (php-fpm children, gunicorn workers, nginx worker) is stopped by signalling the group.
PIDS=()

alive() { # alive PID — running and not a zombie
    local st
    read -r st 2>/dev/null <"/proc/$1/stat" || return 1
    st=${st##*") "}
    [[ ${st%% *} != Z ]]
}

stop_group() { # stop_group PID — TERM the process group, KILL after 5 s; bounded
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_group "$p"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

LAST_PID=
start_bg() { # start_bg LOGNAME CMD... — sets LAST_PID
    local name=$1
    shift
    setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

wait_until() { # wait_until TIMEOUT_S PID CHECK... — poll CHECK while PID lives
    local timeout=$1 pid=$2 i
    shift 2
    for ((i = 0; i < timeout * 10; i++)); do
        "$@" 2>/dev/null && return 0
        [[ -z $pid ]] || alive "$pid" || return 1
        sleep 0.1
    done
    return 1
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------------------------------------
# 1. Install what is missing.
ensure_packages() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v wrk >/dev/null || need+=(wrk)
    command -v gcc >/dev/null || need+=(gcc)
    [[ -f /usr/include/stdio.h ]] || need+=(libc6-dev)
    [[ -f /usr/include/fcgi_stdio.h ]] || need+=(libfcgi-dev)
    command -v cgi-fcgi >/dev/null || need+=(libfcgi-bin)
    command -v curl >/dev/null || need+=(curl)
    command -v openssl >/dev/null || need+=(openssl)
    [[ -x $PY ]] || need+=(python3)
    compgen -G '/usr/sbin/php-fpm*' >/dev/null || need+=(php-fpm)
    { compgen -G '/usr/sbin/php-fpm*' >/dev/null && "$(compgen -G '/usr/sbin/php-fpm*' | sort -V | tail -1)" -m 2>/dev/null | grep -qx SimpleXML; } || need+=(php-xml)
    { [[ -x $PY ]] && "$PY" -c 'import flask' 2>/dev/null; } || need+=(python3-flask)
    { [[ -x $PY ]] && "$PY" -c 'import gunicorn' 2>/dev/null; } || need+=(gunicorn)
    { [[ -x $PY ]] && "$PY" -c 'import ensurepip, venv' 2>/dev/null; } || need+=(python3-venv)
    command -v go >/dev/null || need+=(golang-go)
    command -v valgrind >/dev/null || need+=(valgrind)
    if ((${#need[@]})); then
        [[ $(id -u) == 0 ]] || die "missing packages (${need[*]}); run as root or: sudo apt-get install ${need[*]}"
        log "installing: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! timeout 1800 apt-get install -y --no-install-recommends "${need[@]}"; then
            timeout 600 apt-get update
            timeout 1800 apt-get install -y --no-install-recommends "${need[@]}"
        fi
    fi
    CGI_FCGI=$(command -v cgi-fcgi)
    PHPFPM=$(compgen -G '/usr/sbin/php-fpm*' | sort -V | tail -1)
    [[ -x $PHPFPM ]] || die "php-fpm binary not found after install"
    # wechatpy is not packaged by Debian (bookworm): PyPI, into a venv that also sees Debian's
    # python3-flask and gunicorn.
    if ! "$VENV/bin/python" -c 'import wechatpy, flask, gunicorn' 2>/dev/null; then
        log "creating $VENV with wechatpy from PyPI"
        rm -rf "$VENV"
        "$PY" -m venv --system-site-packages "$VENV"
        timeout 900 "$VENV/bin/pip" install --disable-pip-version-check -q 'wechatpy==1.8.18'
        "$VENV/bin/python" -c 'import wechatpy, flask, gunicorn' || die "wechatpy venv unusable"
    fi
}

# ---------------------------------------------------------------------------------------------
# 2. Build the alternatives (and weixin-fcgi unless given).
WX_BIN=
WX_SKIP=
build_all() {
    mkdir -p "$BUILD"
    log "building floor (C, libfcgi)"
    gcc -O2 -Wall -o "$BUILD/floor" "$ALT/floor.c" -lfcgi
    log "building go-callback (Go, standard library)"
    (cd "$ALT" && CGO_ENABLED=0 GOPROXY=off GOFLAGS='' GO111MODULE=auto GOCACHE="$BUILD/gocache" \
        GOPATH="$BUILD/gopath" timeout 900 go build -trimpath -o "$BUILD/go-callback" main.go)
    if [[ -n ${WEIXIN_FCGI_BIN:-} ]]; then
        WX_BIN=$WEIXIN_FCGI_BIN
    else
        # The build the README installs: `cargo release-static` (.cargo/config.toml).
        WX_BIN=$ROOT/target/x86_64-unknown-linux-gnu/release/weixin-fcgi
        if command -v cargo >/dev/null; then
            log "cargo release-static"
            (cd "$ROOT" && timeout 1800 cargo release-static) >"$RUN/cargo-build.log" 2>&1 ||
                WX_SKIP="cargo release-static failed (log: $RUN_REL/cargo-build.log)"
        else
            WX_SKIP="cargo not found and WEIXIN_FCGI_BIN not set"
        fi
    fi
    if [[ -z $WX_SKIP && ! -x $WX_BIN ]]; then WX_SKIP="binary not found ($WX_BIN)"; fi
    if [[ -n $WX_SKIP ]]; then log "weixin-fcgi skipped: $WX_SKIP"; fi
    if [[ -z $WX_SKIP ]]; then WX_BIN=$(cd "$(dirname "$WX_BIN")" && pwd)/$(basename "$WX_BIN"); fi
}

# ---------------------------------------------------------------------------------------------
# 3. The request: one signed text message.
sign() { printf '%s\n' "$@" | LC_ALL=C sort | tr -d '\n' | sha1sum | cut -d' ' -f1; }
message() { # message CONTENT
    printf '<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName><CreateTime>%s</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[%s]]></Content><MsgId>1234567890123456</MsgId></xml>' \
        "$OPENID" "$TS" "$1"
}
SIG=
QUERY=
BAD_QUERY=
prepare_request() {
    SIG=$(sign "$TOKEN" "$TS" "$NONCE")
    QUERY="signature=$SIG&timestamp=$TS&nonce=$NONCE&openid=$OPENID"
    BAD_QUERY="signature=$(sign wrongtoken "$TS" "$NONCE")&timestamp=$TS&nonce=$NONCE&openid=$OPENID"
    message "$CONTENT" >"$RUN/body.xml"
}

# ---------------------------------------------------------------------------------------------
# 4. nginx: one instance per target, same settings.
write_nginx_conf() { # write_nginx_conf DIR PORT HTTP_EXTRA LOCATION
    local dir=$1 port=$2 extra=$3 location=$4 user_line=
    mkdir -p "$dir/tmp"
    cp /etc/nginx/fastcgi_params "$dir/fastcgi_params"
    [[ ! -f /etc/nginx/fastcgi.conf ]] || cp /etc/nginx/fastcgi.conf "$dir/fastcgi.conf"
    [[ $(id -u) != 0 ]] || user_line='user root root;  # so the worker can reach any of our sockets'
    cat >"$dir/nginx.conf" <<EOF
# generated by benches/run.sh
$user_line
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/xml;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$extra
    server {
        listen 127.0.0.1:$port;
        server_name localhost;
$location
    }
}
EOF
}

fixed_reply() {
    printf '<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[gh_bench]]></FromUserName><CreateTime>%s</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[You said: hello bench]]></Content></xml>' "$OPENID" "$TS"
}

weixin_location() { # weixin_location KEEPALIVE(0|1) SOCKET — the repo's nginx/weixin.conf, verbatim
    local ka=$1 sock=$2
    if [[ -f $ROOT/nginx/weixin.conf ]]; then
        if ((ka)) && ! grep -qE '^[^#]*fastcgi_keep_conn[[:space:]]+on' "$ROOT/nginx/weixin.conf"; then
            log "  note: nginx/weixin.conf has no 'fastcgi_keep_conn on': upstream keepalive will not be used"
        fi
        # verbatim, except a hard-coded socket path is pointed at our upstream, and no access
        # log (its format lives in weixin-upstream.conf; logging is not what is measured)
        sed -e 's#fastcgi_pass[[:space:]]\+unix:[^;]*;#fastcgi_pass weixin_fcgi;#' \
            -e 's#^\([[:space:]]*\)access_log[[:space:]][^;]*;#\1access_log off;#' "$ROOT/nginx/weixin.conf"
    elif ((ka)); then
        printf '        location = /weixin {\n            include fastcgi_params;\n            fastcgi_keep_conn on;\n            fastcgi_pass weixin_fcgi;\n        }\n'
    else
        printf '        location = /weixin {\n            include fastcgi_params;\n            fastcgi_pass weixin_fcgi;\n        }\n'
    fi
}
weixin_keepalive_n() {
    local n=
    if [[ -f $ROOT/nginx/weixin-upstream.conf ]]; then
        n=$(grep -oE '^[^#]*keepalive[[:space:]]+[0-9]+' "$ROOT/nginx/weixin-upstream.conf" | grep -oE '[0-9]+$' | head -1 || true)
    fi
    echo "${n:-8}"
}

weixin_config() { # weixin_config FILE SAFE(0|1)
    {
        printf 'workers = 2\ntimestamp_window = 0\n\n[[account]]\nname = "bench"\npath = "/weixin"\ntoken = "%s"\n' "$TOKEN"
        if (($2)); then printf 'app_id = "%s"\naes_key = "%s"\n' "$APP_ID" "$AES_KEY"; fi
        printf '\n[[account.rule]]\nname = "echo"\nmsg_type = "text"\nreply = { type = "text", content = "You said: {Content}" }\n'
    } >"$1"
}

# ---------------------------------------------------------------------------------------------
# 5. One target: start, check, measure, stop.
T_NGINX=  # nginx master pid
T_APP=    # app root pid (empty for nginx-return)
T_PORT=   # nginx port
T_FIXED=0 # 1: fixed reply, verifies nothing (nginx-return, floor)
T_NOTE=

start_target() { # start_target NAME DIR — returns 1 (with T_NOTE) if it cannot be started
    local name=$1 dir=$2 extra='' location='' port app_port sock
    T_NGINX='' T_APP='' T_FIXED=0 T_NOTE=''
    mkdir -p "$dir"
    port=$(free_port)
    case $name in
    nginx-return)
        T_FIXED=1
        location="        location = /weixin { return 200 '$(fixed_reply)'; }"
        ;;
    floor)
        T_FIXED=1
        sock=$dir/floor.sock
        start_bg "$name-app" "$BUILD/floor" "$sock"
        T_APP=$LAST_PID
        wait_until 10 "$T_APP" test -S "$sock" || { T_NOTE="floor did not create $sock"; return 1; }
        location="        location = /weixin { include fastcgi_params; fastcgi_pass unix:$sock; }"
        ;;
    weixin-fcgi | weixin-fcgi-keepalive)
        if [[ -n $WX_SKIP ]]; then T_NOTE="skipped: $WX_SKIP"; return 1; fi
        sock=$dir/weixin.sock
        weixin_config "$dir/weixin.toml" 0
        start_bg "$name-app" "$WX_BIN" --config "$dir/weixin.toml" --listen "$sock"
        T_APP=$LAST_PID
        wait_until 10 "$T_APP" test -S "$sock" || {
            if alive "$T_APP"; then
                T_NOTE="skipped: weixin-fcgi did not listen on its socket within 10 s (log: $RUN_REL/$name-app.log)"
            else
                T_NOTE="skipped: weixin-fcgi exited without listening on its socket (log: $RUN_REL/$name-app.log)"
            fi
            return 1
        }
        if [[ $name == weixin-fcgi-keepalive ]]; then
            extra="    upstream weixin_fcgi { server unix:$sock; keepalive $(weixin_keepalive_n); }"
            location=$(weixin_location 1 "$sock")
        else
            extra="    upstream weixin_fcgi { server unix:$sock; }"
            location=$(weixin_location 0 "$sock")
        fi
        ;;
    php-fpm)
        sock=$dir/php.sock
        {
            printf '[global]\npid = %s/php-fpm.pid\nerror_log = %s/php-fpm.log\ndaemonize = no\n\n' "$dir" "$dir"
            printf '[bench]\n'
            [[ $(id -u) != 0 ]] || printf 'user = root\ngroup = root\n'
            printf 'listen = %s\nlisten.mode = 0666\nlisten.backlog = 1024\npm = static\npm.max_children = 2\n' "$sock"
        } >"$dir/php-fpm.conf"
        local rflag=()
        [[ $(id -u) != 0 ]] || rflag=(-R)
        start_bg "$name-app" "$PHPFPM" -F "${rflag[@]}" -y "$dir/php-fpm.conf"
        T_APP=$LAST_PID
        wait_until 10 "$T_APP" test -S "$sock" || { T_NOTE="php-fpm did not create $sock"; return 1; }
        location="        location = /weixin {
            include fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $ALT/callback.php;
            fastcgi_pass unix:$sock;
        }"
        ;;
    flask-wechatpy)
        app_port=$(free_port)
        start_bg "$name-app" env PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m gunicorn --workers 2 \
            --worker-class sync --bind "127.0.0.1:$app_port" --chdir "$ALT" --log-level warning flask_app:app
        T_APP=$LAST_PID
        wait_until 20 "$T_APP" tcp_open "$app_port" || { T_NOTE="gunicorn did not listen"; return 1; }
        location="        location = /weixin { proxy_pass http://127.0.0.1:$app_port; }"
        ;;
    go-nethttp)
        app_port=$(free_port)
        start_bg "$name-app" "$BUILD/go-callback" "127.0.0.1:$app_port"
        T_APP=$LAST_PID
        wait_until 10 "$T_APP" tcp_open "$app_port" || { T_NOTE="go-callback did not listen"; return 1; }
        location="        location = /weixin { proxy_pass http://127.0.0.1:$app_port; }"
        ;;
    *) die "unknown target $name" ;;
    esac
    write_nginx_conf "$dir/nginx" "$port" "$extra" "$location"
    nginx -t -q -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log" >"$RUN/$name-nginx-t.log" 2>&1 ||
        { T_NOTE="nginx -t failed: $(tr '\n' ' ' <"$RUN/$name-nginx-t.log")"; return 1; }
    start_bg "$name-nginx" nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log"
    T_NGINX=$LAST_PID
    T_PORT=$port
    wait_until 10 "$T_NGINX" tcp_open "$port" || { T_NOTE="nginx did not listen on $port"; return 1; }
    return 0
}

stop_target() {
    [[ -z $T_NGINX ]] || stop_group "$T_NGINX"
    [[ -z $T_APP ]] || stop_group "$T_APP"
    T_NGINX='' T_APP=''
}

curl_post() { # curl_post QUERY BODYFILE OUTFILE — prints the HTTP status
    curl -s -o "$3" -w '%{http_code}' --max-time 10 -H 'Content-Type: text/xml' \
        --data-binary "@$2" "http://127.0.0.1:$T_PORT/weixin?$1" || echo 000
}

check_target() { # check_target NAME — 0 if it answers (and, if real, verifies and parses)
    local name=$1 st word
    st=$(curl_post "$QUERY" "$RUN/body.xml" "$RUN/check-$name.out")
    if ((T_FIXED)); then
        [[ $st == 200 ]] || { T_NOTE="check failed: status $st"; return 1; }
        return 0
    fi
    word="check$RANDOM$RANDOM"
    message "$word ✓" >"$RUN/check-body.xml"
    st=$(curl_post "$QUERY" "$RUN/check-body.xml" "$RUN/check-$name.out")
    if [[ $st != 200 ]] || ! grep -qF "You said: $word ✓" "$RUN/check-$name.out"; then
        T_NOTE="check failed: signed POST got status $st without the echoed Content"
        return 1
    fi
    st=$(curl_post "$BAD_QUERY" "$RUN/check-body.xml" "$RUN/check-$name-bad.out")
    if [[ $st == 200 ]] || grep -qF "You said: $word" "$RUN/check-$name-bad.out"; then
        T_NOTE="check failed: a POST with a WRONG signature got status $st (must be refused)"
        return 1
    fi
    log "  $name: echoes the Content, refuses a wrong signature ($st)"
    return 0
}

CSV=
csv_row() { local IFS=,; echo "$*" >>"$CSV"; }

bench_target() { # bench_target ROUND ORDER NAME
    local round=$1 order=$2 name=$3 dir="$RUN/r$1-$3" roots idle peak sampler res url nerr
    log "round $round: $name"
    if ! start_target "$name" "$dir" || ! check_target "$name"; then
        log "  $name: ${T_NOTE}"
        stop_target
        local status=failed
        [[ $T_NOTE != skipped* ]] || status=skipped
        csv_row "$round" "$order" "$name" "$status" "" "" "" "" "" "" "" "" "" "" "" "" "" "" "\"${T_NOTE//\"/\'}\""
        return 0
    fi
    roots=${T_APP:-$T_NGINX}
    idle=$("$PY" "$BENCH_DIR/rss.py" once "$roots")
    "$PY" "$BENCH_DIR/rss.py" sample "$dir/peak.txt" "$roots" &
    sampler=$!
    PIDS+=("$sampler")
    url="http://127.0.0.1:$T_PORT/weixin?$QUERY"
    export BENCH_BODY_FILE="$RUN/body.xml"
    if ((BENCH_WARMUP > 0)); then
        timeout $((BENCH_WARMUP + 30)) wrk -t1 -c"$BENCH_CONNECTIONS" -d"${BENCH_WARMUP}s" -s "$BENCH_DIR/post.lua" \
            "$url" >"$dir/wrk-warmup.txt" 2>&1 || true
    fi
    timeout $((BENCH_SECONDS + 60)) wrk -t1 -c"$BENCH_CONNECTIONS" -d"${BENCH_SECONDS}s" --latency \
        -s "$BENCH_DIR/post.lua" "$url" >"$dir/wrk.txt" 2>&1 || true
    stop_group "$sampler"
    peak=$(cut -d' ' -f1 "$dir/peak.txt" 2>/dev/null || echo "")
    nerr=$(grep -c '\[error\]' "$dir/nginx/error.log" 2>/dev/null || true)
    stop_target
    res=$(grep '^BENCH_RESULT ' "$dir/wrk.txt" | head -1 || true)
    if [[ -z $res ]]; then
        log "  $name: wrk produced no result (see $dir/wrk.txt)"
        csv_row "$round" "$order" "$name" "wrk failed" "" "" "" "" "" "" "" "" "" "" "" "$idle" "$peak" "$nerr" ""
        return 0
    fi
    local requests duration_us p50_us p90_us p99_us max_us err_connect err_read err_write err_status err_timeout kv
    for kv in ${res#BENCH_RESULT }; do local "${kv%%=*}=${kv#*=}"; done
    local rps
    rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.1f", (d > 0 ? r * 1e6 / d : 0) }')
    log "  $name: $rps req/s, p50 ${p50_us} us, p99 ${p99_us} us, non-2xx $err_status," \
        "socket errors $((err_connect + err_read + err_write + err_timeout)), RSS idle ${idle} KiB peak ${peak} KiB"
    csv_row "$round" "$order" "$name" ok "$rps" "$requests" "$p50_us" "$p90_us" "$p99_us" "$max_us" \
        "$err_status" "$err_connect" "$err_read" "$err_write" "$err_timeout" "$idle" "$peak" "$nerr" ""
}

# ---------------------------------------------------------------------------------------------
# 6. Instructions per request: callgrind + cgi-fcgi, no nginx.
fcgi_env() { # fcgi_env QUERY BODYFILE — the params nginx's fastcgi_params would send
    local len
    len=$(stat -c %s "$2")
    FCGI_ENV=(
        "QUERY_STRING=$1" REQUEST_METHOD=POST CONTENT_TYPE=text/xml "CONTENT_LENGTH=$len"
        SCRIPT_NAME=/weixin "REQUEST_URI=/weixin?$1" DOCUMENT_URI=/weixin DOCUMENT_ROOT=/usr/share/nginx/html
        SERVER_PROTOCOL=HTTP/1.1 REQUEST_SCHEME=http GATEWAY_INTERFACE=CGI/1.1 SERVER_SOFTWARE=nginx/1.22.1
        REMOTE_ADDR=127.0.0.1 REMOTE_PORT=40000 SERVER_ADDR=127.0.0.1 SERVER_PORT=80 SERVER_NAME=localhost
        REDIRECT_STATUS=200 HTTP_HOST=127.0.0.1 HTTP_CONTENT_TYPE=text/xml "HTTP_CONTENT_LENGTH=$len"
        HTTP_USER_AGENT=Mozilla/4.0 HTTP_ACCEPT='*/*' HTTP_PRAGMA=no-cache
    )
}
fcgi_requests() { # fcgi_requests SOCK BODYFILE N OUTFILE — N requests through cgi-fcgi
    local i
    for ((i = 0; i < $3; i++)); do
        timeout 20 env -i "${FCGI_ENV[@]}" "$CGI_FCGI" -bind -connect "$1" <"$2" || true
        echo
    done >>"$4" 2>/dev/null
}
cg_total() { grep -E '^totals:' "$1" | awk '{ print $2 }' | head -1; }

INSTR=
cg_measure() { # cg_measure LABEL SOCK QUERY BODYFILE MARKER CMD...
    local label=$1 sock=$2 query=$3 body=$4 marker=$5 pid ir1 ir2 ok1 ok2 per out="$RUN/cg-$1"
    shift 5
    rm -f "$sock" "$out".*
    log "callgrind: $label ($BENCH_CG_N1 then $BENCH_CG_N2 requests)"
    start_bg "cg-$label" valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$@"
    pid=$LAST_PID
    if ! wait_until 60 "$pid" test -S "$sock"; then
        log "  $label: no socket under valgrind (see $RUN/cg-$label.log)"
        stop_group "$pid"
        echo "$label,,,,,,,no socket under valgrind" >>"$INSTR"
        return 0
    fi
    fcgi_env "$query" "$body"
    : >"$out.replies"
    fcgi_requests "$sock" "$body" "$BENCH_CG_N1" "$out.replies"
    ok1=$(grep -c -F "$marker" "$out.replies" || true)
    timeout 60 callgrind_control -d "$pid" >/dev/null 2>&1 || true
    fcgi_requests "$sock" "$body" $((BENCH_CG_N2 - BENCH_CG_N1)) "$out.replies"
    ok2=$(grep -c -F "$marker" "$out.replies" || true)
    timeout 60 callgrind_control -d "$pid" >/dev/null 2>&1 || true
    stop_group "$pid"
    ir1=$(cg_total "$out.cg.1" 2>/dev/null || true)
    ir2=$(cg_total "$out.cg.2" 2>/dev/null || true)
    if [[ -z $ir1 || -z $ir2 ]]; then
        log "  $label: callgrind_control dumps missing"
        echo "$label,$BENCH_CG_N1,,$BENCH_CG_N2,,,,callgrind dump failed" >>"$INSTR"
        return 0
    fi
    # dump 1 = start-up + N1 requests; dump 2 = the next N2-N1 requests (counters reset at a dump)
    per=$(((ir2 + (BENCH_CG_N2 - BENCH_CG_N1) / 2) / (BENCH_CG_N2 - BENCH_CG_N1)))
    local note=
    [[ $ok1 == "$BENCH_CG_N1" && $ok2 == "$BENCH_CG_N2" ]] || note="only $ok2 of $BENCH_CG_N2 replies were correct"
    log "  $label: Ir(N1)=$ir1 Ir(N2)=$((ir1 + ir2)) -> $per instructions/request ${note:+($note)}"
    echo "$label,$BENCH_CG_N1,$ir1,$BENCH_CG_N2,$((ir1 + ir2)),$per,$ok2,$note" >>"$INSTR"
}

instructions() {
    local dir=$RUN/cg
    mkdir -p "$dir"
    cg_measure floor "$dir/floor.sock" "$QUERY" "$RUN/body.xml" "You said: hello bench" \
        "$BUILD/floor" "$dir/floor.sock"
    if [[ -n $WX_SKIP ]]; then
        echo "weixin-fcgi,,,,,,,skipped: $WX_SKIP" >>"$INSTR"
        return 0
    fi
    weixin_config "$dir/weixin.toml" 0
    cg_measure weixin-fcgi "$dir/weixin.sock" "$QUERY" "$RUN/body.xml" "You said: $CONTENT" \
        "$WX_BIN" --config "$dir/weixin.toml" --listen "$dir/weixin.sock"
    ((BENCH_SAFE)) || { echo "weixin-fcgi-safe,,,,,,,skipped (BENCH_SAFE=0)" >>"$INSTR"; return 0; }
    # safe mode: AES body and msg_signature; first check (without valgrind) that the binary takes it
    local msig sq pid
    msig=$("$PY" "$BENCH_DIR/safe_msg.py" "$TOKEN" "$AES_KEY" "$APP_ID" "$TS" "$NONCE" "$RUN/body.xml" "$RUN/body-safe.xml")
    sq="signature=$SIG&timestamp=$TS&nonce=$NONCE&openid=$OPENID&encrypt_type=aes&msg_signature=$msig"
    weixin_config "$dir/weixin-safe.toml" 1
    rm -f "$dir/weixin-safe.sock"
    start_bg cg-safe-check "$WX_BIN" --config "$dir/weixin-safe.toml" --listen "$dir/weixin-safe.sock"
    pid=$LAST_PID
    local ok=0
    if wait_until 10 "$pid" test -S "$dir/weixin-safe.sock"; then
        fcgi_env "$sq" "$RUN/body-safe.xml"
        : >"$dir/safe-check.out"
        fcgi_requests "$dir/weixin-safe.sock" "$RUN/body-safe.xml" 1 "$dir/safe-check.out"
        grep -q '<MsgSignature>' "$dir/safe-check.out" && ok=1
    fi
    stop_group "$pid"
    if ((!ok)); then
        log "weixin-fcgi safe mode: skipped (no encrypted reply; see $dir/safe-check.out, $RUN/cg-safe-check.log)"
        echo "weixin-fcgi-safe,,,,,,,skipped: no encrypted reply to a safe-mode request" >>"$INSTR"
        return 0
    fi
    cg_measure weixin-fcgi-safe "$dir/weixin-safe.sock" "$sq" "$RUN/body-safe.xml" "<MsgSignature>" \
        "$WX_BIN" --config "$dir/weixin-safe.toml" --listen "$dir/weixin-safe.sock"
}

# ---------------------------------------------------------------------------------------------
# 7. Machine and versions.
write_meta() {
    local m=$RUN/meta.txt
    {
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "nproc=$(nproc)"
        echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release), kernel $(uname -r)"
        echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: nginx.//')"
        echo "wrk=$(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
        echo "libfcgi=$(dpkg-query -W -f='${Version}' libfcgi-dev 2>/dev/null || echo '?')"
        echo "gcc=$(gcc --version | head -1)"
        echo "php-fpm=$("$PHPFPM" -v | head -1 | cut -d' ' -f2)"
        echo "python=$("$VENV/bin/python" --version 2>&1 | cut -d' ' -f2)"
        echo "flask=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("flask"))')"
        echo "gunicorn=$("$VENV/bin/python" -c 'import gunicorn; print(gunicorn.__version__)')"
        echo "wechatpy=$("$VENV/bin/python" -c 'import wechatpy; print(wechatpy.__version__)')"
        echo "go=$(go version | cut -d' ' -f3 | sed 's/^go//')"
        echo "valgrind=$(valgrind --version | sed 's/^valgrind-//')"
        if [[ -z $WX_SKIP ]]; then
            local ver
            ver=$(timeout 5 "$WX_BIN" --version 2>/dev/null | head -1 || true)
            echo "weixin-fcgi=${WX_BIN#"$ROOT"/} (--version: ${ver:-n/a}; repo at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
        else
            echo "weixin-fcgi=skipped: $WX_SKIP"
        fi
        if [[ -f $ROOT/nginx/weixin.conf ]]; then echo "weixin-nginx=nginx/weixin.conf (verbatim)"; else echo "weixin-nginx=inline fallback location (nginx/weixin.conf not found)"; fi
        echo "settings=wrk 1 thread, $BENCH_CONNECTIONS connections, ${BENCH_WARMUP}s warm-up + ${BENCH_SECONDS}s per target per round, $BENCH_ROUNDS round(s), nginx 1 worker"
        echo "callgrind=N1=$BENCH_CG_N1 N2=$BENCH_CG_N2"
        echo "rundir=${RUN#"$ROOT"/}"
    } >"$m"
}

# ---------------------------------------------------------------------------------------------
main() {
    mkdir -p "$RUN"
    log "run directory: $RUN"
    ensure_packages
    build_all
    prepare_request
    write_meta
    CSV=$RUN/rounds.csv
    echo "round,order,target,status,rps,requests,p50_us,p90_us,p99_us,max_us,err_status,err_connect,err_read,err_write,err_timeout,idle_kib,peak_kib,nginx_errors,note" >"$CSV"
    local targets=() round i order=0
    read -r -a targets <<<"$BENCH_TARGETS"
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        local seq=("${targets[@]}")
        if ((round % 2 == 0)); then
            seq=()
            for ((i = ${#targets[@]} - 1; i >= 0; i--)); do seq+=("${targets[i]}"); done
        fi
        order=0
        for t in "${seq[@]}"; do
            order=$((order + 1))
            bench_target "$round" "$order" "$t"
        done
    done
    INSTR=$RUN/instructions.csv
    echo "label,n1,ir_n1,n2,ir_n2,per_request,ok,note" >"$INSTR"
    if ((BENCH_CALLGRIND)); then instructions; else echo "all,,,,,,,skipped (BENCH_CALLGRIND=0)" >>"$INSTR"; fi
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/meta.txt"
    mkdir -p "$BENCH_OUT"
    PYTHONDONTWRITEBYTECODE=1 "$PY" "$BENCH_DIR/report.py" "$RUN" "$BENCH_OUT"
    log "wrote $BENCH_OUT/RESULTS.md, $BENCH_OUT/results.json, $BENCH_OUT/results.svg"
}

main "$@"
