#!/usr/bin/env bash
# Manual run of the Bun demo: start server.ts with JSC's jitdump on, wait for "listening <port>", run
# driver.ts ROUNDS times (printing the server's VmRSS after each round), then stop the server.
#
# Env: BUN (default: the .tools/ Bun of this checkout or of its main worktree, else bun on PATH),
# OUT (default: a new /tmp/bun-demo.XXXXXX; gets server.log and jitdump/), TURNS (40), CONCURRENCY (2),
# CONVERSATIONS (4), ROUNDS (1), SETTLE (seconds to wait before reading VmRSS after a round, 3),
# DEMO_LEAK (passed to the server).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z ${BUN:-} ]]; then
    # .tools/ of this checkout, or of the main checkout when this is a git worktree, or bun on PATH
    common=$(git -C "$here" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    for root in "$here/../.." ${common:+"$common/.."}; do
        candidate=$root/.tools/bun/node_modules/@oven/bun-linux-x64/bin/bun
        if [[ -x $candidate ]]; then BUN=$(realpath "$candidate"); break; fi
    done
    BUN=${BUN:-$(command -v bun || true)}
fi
[[ -n $BUN && -x $BUN ]] || { echo "run-demo: no bun; set BUN=/path/to/bun" >&2; exit 1; }

OUT=${OUT:-$(mktemp -d /tmp/bun-demo.XXXXXX)}
ROUNDS=${ROUNDS:-1}
SETTLE=${SETTLE:-3}
mkdir -p "$OUT/jitdump"
log=$OUT/server.log
: >"$log" # exists before the server starts writing it, for the wait loop below

BUN_JSC_useJITDump=1 BUN_JSC_jitDumpDirectory=$OUT/jitdump PORT=${PORT:-0} \
    "$BUN" "$here/server.ts" >"$log" 2>&1 &
server=$!
stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"
        wait "$server" 2>/dev/null || true
    fi
}
trap stop_server EXIT

port=
for _ in $(seq 100); do
    port=$(sed -n 's/^listening \([0-9][0-9]*\)$/\1/p' "$log" || true)
    [[ -n $port ]] && break
    kill -0 "$server" 2>/dev/null || { echo "run-demo: the server exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $port ]] || { echo "run-demo: no 'listening' line after 10 s" >&2; exit 1; }
url=http://127.0.0.1:$port

rss() { awk '/^VmRSS:/ { print $2, $3 }' "/proc/$server/status"; }
health() { "$BUN" -e "console.log(await (await fetch('$url/health')).text())"; }

echo "server pid $server, $url, output in $OUT"
echo "VmRSS before: $(rss)"
for round in $(seq "$ROUNDS"); do
    "$BUN" "$here/driver.ts" --url "$url" --turns "${TURNS:-40}" --concurrency "${CONCURRENCY:-2}" \
        --conversations "${CONVERSATIONS:-4}"
    sleep "$SETTLE"
    echo "VmRSS after round $round: $(rss)"
    echo "health: $(health)"
done
echo "jitdump mapping: $(grep -F "$OUT/jitdump/" "/proc/$server/maps" || echo none)"
stop_server
echo "jitdump files: $(ls "$OUT/jitdump")"
echo "server.log: $(grep -c '^turn start ' "$log") 'turn start' lines, $(grep -c '^turn end ' "$log") 'turn end' lines"
