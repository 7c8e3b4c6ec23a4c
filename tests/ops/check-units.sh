#!/usr/bin/env bash
# check-units.sh — static checks of the ops files in systemd/ and nginx/.
#
#   tests/ops/check-units.sh [PATH-TO-weixin-fcgi-BINARY]
#
# 1. security   systemd-analyze security --offline: overall exposure of weixin-fcgi.service must
#               be <= 1.0, alone and with the forwarding.conf drop-in.
# 2. verify     systemd-analyze verify of both units (and the drop-in) in a scratch root. verify
#               insists that /usr/bin/weixin-fcgi exists and is executable: the binary given
#               as $1 is copied there, otherwise a stub script stands in for it (the unit files are
#               checked either way; only the binary's presence is then not).
# 3. sysusers   weixin-fcgi.sysusers and weixin-fcgi.tmpfiles applied to the scratch root give
#               /etc/weixin-fcgi 0750 and weixin-fcgi.toml 0640, group weixin-fcgi-conf
#               (as root only: it chowns).
# 4. nginx      nginx -t on a scratch nginx.conf that includes nginx/weixin-upstream.conf (socket
#               path rewritten to a scratch path) in http {} and nginx/weixin.conf verbatim in a
#               server {} on 127.0.0.1:<free port>.
#
# Runs from any directory. Installs nginx-light / systemd with apt-get when missing (as root;
# on a host booted with systemd, installing nginx also starts it). Otherwise nothing is started
# and nothing is written outside a scratch directory, removed on exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SYSTEMD_DIR=$REPO/systemd
NGINX_DIR=$REPO/nginx
MAX_EXPOSURE=1.0
BINARY=${1:-}

PASS=0 FAIL=0 SKIP=0
pass() { PASS=$((PASS + 1)); printf 'PASS  %-9s %s\n' "$1" "$2"; }
fail() { FAIL=$((FAIL + 1)); printf 'FAIL  %-9s %s\n' "$1" "$2"; }
skip() { SKIP=$((SKIP + 1)); printf 'SKIP  %-9s %s\n' "$1" "$2"; }
indent() { sed 's/^/          | /'; }

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/weixin-fcgi-ops.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

# --- tools ------------------------------------------------------------------------------------
apt_install() { # apt_install PACKAGE...: install with apt-get when we can, else explain
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "check-units: missing $*; install it (apt-get install $*) or run as root" >&2
        return 1
    fi
    echo "check-units: installing $* with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >&2 || { apt-get update -q >&2 && apt-get install -y -q "$@" >&2; }
}

if ! command -v systemd-analyze >/dev/null; then
    apt_install systemd || true
fi
# nginx lives in /usr/sbin, which is not on every user's PATH.
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
    # nginx-light is Debian's small build (a transitional name on newer releases).
    apt_install nginx-light || apt_install nginx || true
    NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
fi

# --- scratch root: units as installed, plus the host's unit directory for the targets ----------
ROOT=$SCRATCH/root
UNITDIR=$ROOT/etc/systemd/system
mkdir -p "$UNITDIR/weixin-fcgi.service.d" "$ROOT/usr/bin" "$ROOT/usr/lib/systemd"
cp "$SYSTEMD_DIR/weixin-fcgi.socket" "$SYSTEMD_DIR/weixin-fcgi.service" "$UNITDIR/"
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$d" ]; then cp -r "$d" "$ROOT/usr/lib/systemd/"; break; fi
done
if [ -n "$BINARY" ]; then
    [ -x "$BINARY" ] || { echo "check-units: $BINARY is not an executable file" >&2; exit 2; }
    cp "$BINARY" "$ROOT/usr/bin/weixin-fcgi"
    BINARY_NOTE="with $BINARY as /usr/bin/weixin-fcgi"
else
    printf '#!/bin/sh\nexit 0\n' > "$ROOT/usr/bin/weixin-fcgi"
    chmod 0755 "$ROOT/usr/bin/weixin-fcgi"
    BINARY_NOTE="with a stub /usr/bin/weixin-fcgi (pass the built binary as \$1 to use it)"
fi

# --- 1. security ------------------------------------------------------------------------------
exposure() { # exposure: prints the overall exposure of weixin-fcgi.service in $ROOT
    local out
    out=$(systemd-analyze security --offline=yes --root="$ROOT" weixin-fcgi.service 2>&1) || true
    printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
    printf '%s\n' "$out" | grep '✗' > "$SCRATCH/flagged" || true
}
check_exposure() { # check_exposure LABEL
    local level
    level=$(exposure)
    if [ -z "$level" ]; then
        fail security "$1: no 'Overall exposure level' line from systemd-analyze security"
    elif awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
        pass security "$1: exposure $level (limit $MAX_EXPOSURE)"
    else
        fail security "$1: exposure $level is above $MAX_EXPOSURE; still flagged:"
        indent < "$SCRATCH/flagged"
    fi
}
if command -v systemd-analyze >/dev/null; then
    check_exposure "weixin-fcgi.service"
    cp "$SYSTEMD_DIR/forwarding.conf" "$UNITDIR/weixin-fcgi.service.d/"
    check_exposure "weixin-fcgi.service + forwarding.conf"
    rm "$UNITDIR/weixin-fcgi.service.d/forwarding.conf"
    cp "$SYSTEMD_DIR/wechat-api.conf" "$UNITDIR/weixin-fcgi.service.d/"
    check_exposure "weixin-fcgi.service + wechat-api.conf"
    rm "$UNITDIR/weixin-fcgi.service.d/wechat-api.conf"
else
    fail security "systemd-analyze not found (package systemd)"
fi

# --- 2. verify --------------------------------------------------------------------------------
verify() { # verify LABEL: systemd-analyze verify both units in $ROOT; any output is a failure
    local out rc=0 man=()
    # verify also checks that Documentation=man:... pages exist; minimal images strip man pages.
    if ! command -v man >/dev/null || ! man -w 5 systemd.exec >/dev/null 2>&1; then
        man=(--man=no)
    fi
    # Documentation=man:weixin-fcgi(8) is the repository's man page, as the package installs it.
    mkdir -p "$SCRATCH/man/man8"
    cp "$REPO/man/weixin-fcgi.8" "$SCRATCH/man/man8/"
    out=$(MANPATH="$SCRATCH/man:$(manpath 2>/dev/null || true)" systemd-analyze verify "${man[@]}" \
        --root="$ROOT" "$UNITDIR/weixin-fcgi.socket" "$UNITDIR/weixin-fcgi.service" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
        pass verify "$1: clean ${man[*]:+(man pages not checked: none installed) }$BINARY_NOTE"
    else
        fail verify "$1: systemd-analyze verify exit $rc:"
        printf '%s\n' "$out" | indent
    fi
}
if command -v systemd-analyze >/dev/null; then
    verify "weixin-fcgi.socket, weixin-fcgi.service"
    cp "$SYSTEMD_DIR/forwarding.conf" "$UNITDIR/weixin-fcgi.service.d/"
    verify "with forwarding.conf"
    rm "$UNITDIR/weixin-fcgi.service.d/forwarding.conf"
else
    fail verify "systemd-analyze not found (package systemd)"
fi

# --- 3. sysusers + tmpfiles -------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
    skip sysusers "needs root (tmpfiles chowns inside the scratch root)"
elif ! command -v systemd-sysusers >/dev/null || ! command -v systemd-tmpfiles >/dev/null; then
    fail sysusers "systemd-sysusers/systemd-tmpfiles not found (package systemd)"
else
    mkdir -p "$ROOT/etc/weixin-fcgi"
    : > "$ROOT/etc/weixin-fcgi/weixin-fcgi.toml"
    chmod 0755 "$ROOT/etc/weixin-fcgi"
    chmod 0644 "$ROOT/etc/weixin-fcgi/weixin-fcgi.toml"
    if out=$(systemd-sysusers --root="$ROOT" "$SYSTEMD_DIR/weixin-fcgi.sysusers" 2>&1 &&
        systemd-tmpfiles --root="$ROOT" --create "$SYSTEMD_DIR/weixin-fcgi.tmpfiles" 2>&1); then
        gid=$(awk -F: '$1 == "weixin-fcgi-conf" { print $3 }' "$ROOT/etc/group")
        got="$(stat -c '%a %u:%g' "$ROOT/etc/weixin-fcgi" "$ROOT/etc/weixin-fcgi/weixin-fcgi.toml")"
        got=${got//$'\n'/ }
        if [ -n "$gid" ] && [ "$got" = "750 0:$gid 640 0:$gid" ]; then
            pass sysusers "/etc/weixin-fcgi 0750, weixin-fcgi.toml 0640, root:weixin-fcgi-conf"
        else
            fail sysusers "unexpected result: group gid '${gid}', modes/owners '$got'"
        fi
    else
        fail sysusers "systemd-sysusers/systemd-tmpfiles failed:"
        printf '%s\n' "$out" | indent
    fi
fi

# --- 4. nginx ---------------------------------------------------------------------------------
free_port() { # free_port: first port in 20000..20999 where nothing listens on 127.0.0.1
    local p
    for p in $(seq 20000 20999); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}
if [ -z "$NGINX" ]; then
    fail nginx "nginx not found and not installable here"
elif [ ! -f /etc/nginx/fastcgi_params ]; then
    fail nginx "/etc/nginx/fastcgi_params missing (package nginx-common); weixin.conf includes it"
else
    NG=$SCRATCH/nginx
    mkdir -p "$NG/logs"
    # weixin.conf says "include fastcgi_params;", resolved next to nginx.conf.
    ln -s /etc/nginx/fastcgi_params "$NG/fastcgi_params"
    sed "s#unix:/run/weixin-fcgi.sock#unix:$NG/weixin-fcgi.sock#" \
        "$NGINX_DIR/weixin-upstream.conf" > "$NG/weixin-upstream.conf"
    if ! grep -q "unix:$NG/weixin-fcgi.sock" "$NG/weixin-upstream.conf"; then
        fail nginx "weixin-upstream.conf lacks 'server unix:/run/weixin-fcgi.sock' to redirect"
    else
        PORT=$(free_port)
        cat > "$NG/nginx.conf" <<EOF
worker_processes 1;
pid $NG/nginx.pid;
error_log $NG/logs/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $NG/client_body;
    fastcgi_temp_path $NG/fastcgi;
    proxy_temp_path $NG/proxy;
    uwsgi_temp_path $NG/uwsgi;
    scgi_temp_path $NG/scgi;
    include $NG/weixin-upstream.conf;
    server {
        listen 127.0.0.1:$PORT;
        include $NGINX_DIR/weixin.conf;
        include $NGINX_DIR/weixin-oauth.conf;
    }
}
EOF
        if out=$("$NGINX" -t -q -p "$NG" -c "$NG/nginx.conf" -e "$NG/logs/error.log" 2>&1); then
            pass nginx "nginx -t: weixin-upstream.conf (scratch socket), weixin.conf and weixin-oauth.conf verbatim, :$PORT"
            [ -z "$out" ] || printf '%s\n' "$out" | indent
        else
            fail nginx "nginx -t failed:"
            printf '%s\n' "$out" | indent
        fi
    fi
fi

# --- summary ----------------------------------------------------------------------------------
echo "check-units: $PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" -eq 0 ]
