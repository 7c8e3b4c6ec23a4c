#!/usr/bin/env bash
# See weixin-fcgi answer at once: builds it, starts it with the embedded demo config on a
# temporary socket, plays WeChat's server against it with `weixin-fcgi send` (URL verification,
# a text message, a subscribe event, and a forged request that must be refused), then stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/weixin-fcgi
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
sock="$dir/weixin-fcgi.sock"

echo "== weixin-fcgi --listen $sock   (embedded demo config, token \"weixin-fcgi-demo\")"
"$bin" --listen "$sock" &
pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done

run() { echo; echo "\$ weixin-fcgi send --to \$SOCK $*"; "$bin" send --to "$sock" "$@"; }
run verify
run text "你好, weixin-fcgi"
run event subscribe
echo
echo "\$ weixin-fcgi send --to \$SOCK --token forged text hi    # wrong token: must be refused"
if "$bin" send --to "$sock" --token forged text hi; then
    echo "unexpected: a forged request was answered" >&2
    exit 1
fi
echo
echo "== stopping (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
pid=
echo "done"
