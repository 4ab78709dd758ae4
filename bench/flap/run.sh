#!/usr/bin/env bash
# bench/flap/run.sh — the auto-scaler under a steady Zipf read load (issue 13).
#
# The measurement of issue 13, on the real system: `memcache up` with the
# scaler deciding every 5 s, 4 MB LRU nodes, automatic mode (grow above 30 %
# misses ×2, shrink below 10 % ×0.5), and `memcache load` reading 400 keys of
# 40 KB with Zipf skew 1.1 at 150 req/s. It prints the pool size every second
# as a run of sizes, and the scaler's decision log at the end (from the
# manager UI's JSON). Everything it starts is stopped on exit.
#
#   bash bench/flap/run.sh [duration, default 150s]
set -euo pipefail
DURATION=${1:-150s}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d -t memcache-flap.XXXXXX)
UP_PID=""
cleanup() {
	[ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$REPO" && go build -o "$WORK/memcache" . && go build -o "$WORK/driver" ./bench/driver)
BASE=$("$WORK/driver" portbase)
FE_PORT=$("$WORK/driver" ports -n 1)
FE="http://127.0.0.1:$FE_PORT"
"$WORK/memcache" --log-level warn up --data-dir "$WORK/up" --host 127.0.0.1 --port-base "$BASE" \
	--frontend-addr "127.0.0.1:$FE_PORT" --info-file "$WORK/up.json" --scaler-interval 5s >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 1200); do [ -s "$WORK/up.json" ] && break; sleep 0.1; done
[ -s "$WORK/up.json" ] || { tail -20 "$WORK/up.log" >&2; exit 1; }
TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$WORK/up.json")
UI=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["managers"][0])' "$WORK/up.json")

curl -sf -X POST -H "Authorization: Bearer $TOKEN" \
	"$FE/api/configure_cache?mode=manual&numNodes=1&cacheSize=4" >/dev/null
"$WORK/memcache" load --frontend "$FE" --keys 400 --image-kb 40 --skew 1.1 --rate 150 --duration 1s >/dev/null
curl -sf -X POST -H "Authorization: Bearer $TOKEN" \
	"$FE/api/configure_cache?mode=auto&maxMiss=0.3&minMiss=0.1&expRatio=2&shrinkRatio=0.5" >/dev/null
echo "# $(date -u +%FT%TZ) $(git -C "$REPO" rev-parse --short HEAD): up --scaler-interval 5s; 4 MB nodes; auto 0.3/0.1 x2/x0.5; load 400 keys x 40 KB, skew 1.1, 150 req/s, $DURATION"
"$WORK/memcache" load --frontend "$FE" --keys 400 --image-kb 40 --skew 1.1 --rate 150 --no-seed \
	--duration "$DURATION" --concurrency 16 >"$WORK/load.log" 2>&1 &
LOAD=$!
sizes=""
last=""
start=$(date +%s)
while kill -0 "$LOAD" 2>/dev/null; do
	n=$(curl -s -X POST -H "Authorization: Bearer $TOKEN" "$FE/api/getNumNodes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["numNodes"])' 2>/dev/null || echo "?")
	if [ "$n" != "$last" ]; then
		sizes="$sizes $n@$(($(date +%s) - start))s"
		last=$n
	fi
	sleep 1
done
wait "$LOAD" || true
echo "pool sizes (size@seconds into the load):$sizes"
tail -4 "$WORK/load.log"
# The decision log, oldest first, from the manager UI's JSON (a session).
CSRF=$(curl -s -c "$WORK/jar" -b "$WORK/jar" "$UI/ui/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
curl -s -c "$WORK/jar" -b "$WORK/jar" -o /dev/null --data-urlencode "csrf=$CSRF" --data-urlencode "token=$TOKEN" "$UI/ui/login"
curl -s -b "$WORK/jar" "$UI/ui/api/dashboard" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for x in reversed(d["decisions"]):
    if x.get("mode") != "auto": continue
    mr = x.get("miss_rate")
    est = x.get("estimate")
    print("%s  n=%d -> %d  miss %s  %s%s" % (x["time"][11:19], x["nodes"], x["target"],
        "%.3f" % mr if mr is not None else "-", x["reason"],
        "  [estimate %.2f at %s]" % (est, x.get("estimate_nodes")) if est is not None else ""))
'
