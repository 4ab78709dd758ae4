#!/usr/bin/env bash
# bench/dip/run.sh — the hit-rate dip when the pool is resized under load
# (issue 13).
#
# Builds memcache, starts `memcache up` on free ports of 127.0.0.1 (3
# managers, a node, up's own frontend) and a second frontend joined to it
# with its near-cache as asked, off by default (a near-cache hit hides a
# node miss, so the figure would not measure the pool; up's own frontend
# keeps its 64 MB near-cache and serves no measured read). bench/dip's driver then sets manual mode and the
# node capacity, uploads the images through that frontend, and for each
# scenario resizes the pool to the start size, warms it with an open-loop
# Zipf read load until the 1-s hit rate is steady, records 20 s, resizes,
# records 30 s, and prints a markdown table ready for BENCHMARKS.md.
# Every answer's length, bytes and ETag are checked against the upload.
# Everything it starts is stopped on exit.
#
#   bash bench/dip/run.sh [--near-cache-mb 0] [--keys 400] [--image-kb 40] [--skew 1.1]
#                         [--rate 300] [--cache-mb 16] [--scenarios 1:4,2:4,4:2] [--keep]
#
#   --near-cache-mb  the measuring frontend's near-cache (0: off, the default)
#   --keep           keep the temp dir (logs, data) after the run
#
# Environment: DIP_NEAR_CACHE_MB, DIP_KEYS, DIP_IMAGE_KB, DIP_SKEW, DIP_RATE,
# DIP_CACHE_MB and DIP_SCENARIOS set the same defaults.
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

NEAR=${DIP_NEAR_CACHE_MB:-0}
KEYS=${DIP_KEYS:-400}
IMAGE_KB=${DIP_IMAGE_KB:-40}
SKEW=${DIP_SKEW:-1.1}
RATE=${DIP_RATE:-300}
CACHE_MB=${DIP_CACHE_MB:-16}
SCENARIOS=${DIP_SCENARIOS:-1:4,2:4,4:2}
KEEP=0
ARGS=("$@")
while [ $# -gt 0 ]; do
	case $1 in
	--near-cache-mb) NEAR=$2; shift ;;
	--keys) KEYS=$2; shift ;;
	--image-kb) IMAGE_KB=$2; shift ;;
	--skew) SKEW=$2; shift ;;
	--rate) RATE=$2; shift ;;
	--cache-mb) CACHE_MB=$2; shift ;;
	--scenarios) SCENARIOS=$2; shift ;;
	--keep) KEEP=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done

REPO=$(cd "$(dirname "$0")/../.." && pwd)
log() { echo "run.sh: $*" >&2; }

# --- processes, cleaned up on exit -------------------------------------------
WORK=$(mktemp -d -t memcache-dip.XXXXXX)
PIDS=()
UP_PID=""
CHILD="" # the driver, while it runs
cleanup() {
	local pid kids=()
	if [ -n "$CHILD" ]; then
		kill -TERM "$CHILD" 2>/dev/null || true
		wait "$CHILD" 2>/dev/null || true
	fi
	# up's nodes are its children: remember them in case up dies first.
	[ -n "$UP_PID" ] && kids=($(pgrep -P "$UP_PID" 2>/dev/null || true))
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	for pid in "${kids[@]}"; do
		# Only a node still running this run's binary (not a reused pid).
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$WORK/memcache" ] && kill -KILL "$pid" 2>/dev/null || true
	done
	if [ "$KEEP" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
	local what=$1 secs=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	log "timed out after ${secs}s waiting for $what"
	for f in "$WORK"/*.log; do
		[ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }
	done
	return 1
}

# --- build -------------------------------------------------------------------
log "building memcache and the drivers in $WORK"
(cd "$REPO" && go build -o "$WORK/memcache" . && go build -o "$WORK/driver" ./bench/driver && go build -o "$WORK/dip" ./bench/dip)
MC="$WORK/memcache"

mapfile -t P < <("$WORK/driver" ports -n 3)
FE_PORT=${P[0]} FE_CLUSTER=${P[1]} FE_GOSSIP=${P[2]}
BASE=$("$WORK/driver" portbase)
UP_FE_PORT=$("$WORK/driver" ports -n 1)
DATA="$WORK/up"

# --- memcache up (the scaler idle: manual mode, and a day between its runs) ----
log "starting memcache up (port base $BASE)"
"$MC" --log-level warn up --data-dir "$DATA" --host 127.0.0.1 --port-base "$BASE" \
	--frontend-addr "127.0.0.1:$UP_FE_PORT" --info-file "$WORK/up.json" --scaler-interval 24h \
	>"$WORK/up.log" 2>&1 &
UP_PID=$!
PIDS+=($!)
wait_for "memcache up to be ready" 120 test -s "$WORK/up.json"
TLSDIR="$DATA/tls"
"$MC" tls cert create --dir "$TLSDIR" --role client --name dip >/dev/null

# --- the measuring frontend, joined to up's cluster ------------------------------
FE_URL="http://127.0.0.1:$FE_PORT"
log "starting a frontend with --near-cache-mb $NEAR on $FE_URL"
"$MC" --log-level warn frontend --name dip-frontend \
	--http-addr "127.0.0.1:$FE_PORT" --cluster-addr "127.0.0.1:$FE_CLUSTER" --gossip-addr "127.0.0.1:$FE_GOSSIP" \
	--join "127.0.0.1:$((BASE + 201))" --gossip-key-file "$DATA/gossip-key" --cluster-secret-file "$DATA/cluster-secret" \
	--managers "https://127.0.0.1:$((BASE + 301))" --managers "https://127.0.0.1:$((BASE + 302))" --managers "https://127.0.0.1:$((BASE + 303))" \
	--db "$WORK/fe/keys.db" --blob-dir "$WORK/fe/blobs" \
	--tls-ca "$TLSDIR/ca.pem" --tls-cert "$TLSDIR/frontend.pem" --tls-key "$TLSDIR/frontend-key.pem" \
	--near-cache-mb "$NEAR" \
	>"$WORK/frontend.log" 2>&1 &
PIDS+=($!)
wait_for "the frontend" 60 curl -fsS "$FE_URL/readyz"

# --- measure -------------------------------------------------------------------
MANAGERS="http://127.0.0.1:$((BASE + 1)),http://127.0.0.1:$((BASE + 2)),http://127.0.0.1:$((BASE + 3))"
log "measuring: $KEYS keys of $IMAGE_KB KB, skew $SKEW, $RATE reads/s, $CACHE_MB MB nodes, scenarios $SCENARIOS"
RC=0
"$WORK/dip" -frontend "$FE_URL" -managers "$MANAGERS" -token-file "$DATA/admin-token" \
	-pool "https://127.0.0.1:$((BASE + 301))/v1/pool" -ca "$TLSDIR/ca.pem" -cert "$TLSDIR/dip.pem" -key "$TLSDIR/dip-key.pem" \
	-secret-file "$DATA/cluster-secret" \
	-keys "$KEYS" -image-kb "$IMAGE_KB" -skew "$SKEW" -rate "$RATE" -cache-mb "$CACHE_MB" -scenarios "$SCENARIOS" \
	>"$WORK/table.md" &
CHILD=$!
wait "$CHILD" || RC=$?
CHILD=""

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
NEAR_TEXT="near-cache off"
[ "$NEAR" != 0 ] && NEAR_TEXT="near-cache $NEAR MB"
cat <<EOF

### $NEAR_TEXT ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$REPO" rev-parse --short HEAD))

Machine: \`nproc\` = $(nproc), $CPU, Linux $(uname -r), $(go version | awk '{print $3}'), load average at the end
$(cut -d' ' -f1-3 /proc/loadavg). $KEYS keys of $IMAGE_KB KB, Zipf skew $SKEW, $RATE reads/s (open loop), $CACHE_MB MB LRU nodes.
Command: \`bash bench/dip/run.sh${ARGS[*]:+ ${ARGS[*]}}\`

$(cat "$WORK/table.md")
EOF
exit $RC
