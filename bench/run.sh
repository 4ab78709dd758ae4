#!/usr/bin/env bash
# bench/run.sh — memcache's read paths beside nginx and memcached, on the same
# bytes, in the same run (issue 12).
#
# Starts, all on 127.0.0.1 and on free ports: nginx serving the images as
# static files, memcached holding them, `memcache up` (3 managers, a node, a
# frontend) with the images uploaded through the frontend, and a
# `memcache node` holding them (the node row: see below); then measures
# every one with bench/driver (closed-loop keep-alive clients, interleaved
# rounds, every answer checked byte for byte) and with wrk, and prints
# markdown tables ready to paste into BENCHMARKS.md. Everything it starts is
# stopped on exit. Needs go, curl, and root or sudo if nginx, memcached or
# wrk must be installed (apt-get).
#
#   bash bench/run.sh [--tls] [--round 3s] [--rounds 5] [--clients 16]
#                     [--sizes 100,1] [--wrk-duration 5s] [--no-wrk] [--up-node] [--keep]
#
#   --tls       nginx, the frontend and memcached over TLS, the node over
#               mutual TLS (certificates of up's cluster CA)
#   --sizes     image sizes in KB, comma-separated; the table's columns
#   --up-node   also measure up's own node (the images' owner), mutual TLS
#   --keep      keep the temp dir (logs, config) after the run
#
# Environment: BENCH_ROUND, BENCH_ROUNDS, BENCH_CLIENTS, BENCH_SIZES,
# BENCH_WRK_DURATION set the same defaults.
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

TLS=0
ROUND=${BENCH_ROUND:-3s}
ROUNDS=${BENCH_ROUNDS:-5}
CLIENTS=${BENCH_CLIENTS:-16}
SIZES=${BENCH_SIZES:-100,1}
WRK_DURATION=${BENCH_WRK_DURATION:-5s}
WRK=1
KEEP=0
UP_NODE=0
ARGS=("$@")
while [ $# -gt 0 ]; do
	case $1 in
	--tls) TLS=1 ;;
	--round) ROUND=$2; shift ;;
	--rounds) ROUNDS=$2; shift ;;
	--clients) CLIENTS=$2; shift ;;
	--sizes) SIZES=$2; shift ;;
	--wrk-duration) WRK_DURATION=$2; shift ;;
	--no-wrk) WRK=0 ;;
	--keep) KEEP=1 ;;
	--up-node) UP_NODE=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "run.sh: $*" >&2; }

# --- tools -----------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
missing=()
for tool in nginx memcached wrk curl; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
	SUDO=
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	log "installing ${missing[*]} with apt-get"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- processes, cleaned up on exit -------------------------------------------
WORK=$(mktemp -d -t memcache-bench.XXXXXX)
PIDS=()
UP_PID=""
CHILD="" # the measurement running, if any (see measure)
cleanup() {
	local pid kids=()
	[ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null
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

# measure OUT CMD...: run CMD with its standard output in file OUT, in the
# background so that a signal to this script ends it at once (bash runs a
# trap only once a foreground command is done), and return its status.
measure() {
	local out=$1 rc=0
	shift
	"$@" >"$out" &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=""
	return $rc
}

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

# --- build ---------------------------------------------------------------------
log "building memcache and the driver in $WORK"
(cd "$REPO" && go build -o "$WORK/memcache" . && go build -o "$WORK/driver" ./bench/driver)
MC="$WORK/memcache"
DRIVER="$WORK/driver"

# --- the images: PNG signature, then random bytes ------------------------------
chmod 755 "$WORK" # nginx's workers read www/ as an unprivileged user
mkdir -p "$WORK/www"
IFS=, read -r -a KBS <<<"$SIZES"
for kb in "${KBS[@]}"; do
	{ printf '\x89PNG\r\n\x1a\n'; head -c $((kb * 1024 - 8)) /dev/urandom; } >"$WORK/www/img-${kb}k.png"
done
chmod 644 "$WORK"/www/*

mapfile -t P < <("$DRIVER" ports -n 8)
NGINX_PORT=${P[0]} MEMCACHED_PORT=${P[1]} FE_PORT=${P[2]} NODE_PORT=${P[3]} NODE_GOSSIP=${P[4]}
FT_PORT=${P[5]} FT_CLUSTER=${P[6]} FT_GOSSIP=${P[7]}
BASE=$("$DRIVER" portbase)
DATA="$WORK/up"

# --- memcache up ------------------------------------------------------------------
log "starting memcache up (port base $BASE, frontend 127.0.0.1:$FE_PORT)"
"$MC" --log-level warn up --data-dir "$DATA" --host 127.0.0.1 --port-base "$BASE" \
	--frontend-addr "127.0.0.1:$FE_PORT" --info-file "$WORK/up.json" --scaler-interval 24h \
	>"$WORK/up.log" 2>&1 &
UP_PID=$!
PIDS+=($!)
wait_for "memcache up to be ready" 120 test -s "$WORK/up.json"
SECRET=$(cat "$DATA/cluster-secret")
TLSDIR="$DATA/tls"
# A client certificate for the nodes' mutual TLS, and a server certificate
# (same CA, ECDSA P-256) for nginx, memcached and the frontend's public
# listener with --tls.
"$MC" tls cert create --dir "$TLSDIR" --role client --name bench >/dev/null
"$MC" tls cert create --dir "$TLSDIR" --role frontend --host 127.0.0.1 --name public >/dev/null

# --- nginx -----------------------------------------------------------------------------
mkdir -p "$WORK/nginx/tmp"
SCHEME=http
LISTEN="127.0.0.1:$NGINX_PORT"
SSL=""
if [ "$TLS" = 1 ]; then
	SCHEME=https
	LISTEN="$LISTEN ssl"
	SSL="ssl_certificate $TLSDIR/public.pem; ssl_certificate_key $TLSDIR/public-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;"
fi
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  types { image/png png; }
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  server {
    listen $LISTEN;
    $SSL
    root $WORK/www;
  }
}
EOF
log "starting nginx on $SCHEME://127.0.0.1:$NGINX_PORT"
nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
wait_for nginx 30 curl -fsS --cacert "$TLSDIR/ca.pem" -o /dev/null "$SCHEME://127.0.0.1:$NGINX_PORT/img-${KBS[0]}k.png"

# --- memcached ------------------------------------------------------------------------
MCD=(memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64)
[ "$(id -u)" -eq 0 ] && MCD+=(-u root)
MCSET=("$DRIVER" mcset -addr "127.0.0.1:$MEMCACHED_PORT")
if [ "$TLS" = 1 ]; then
	MCD+=(-Z -o "ssl_chain_cert=$TLSDIR/public.pem,ssl_key=$TLSDIR/public-key.pem")
	MCSET+=(-tls -ca "$TLSDIR/ca.pem")
fi
log "starting memcached on 127.0.0.1:$MEMCACHED_PORT"
"${MCD[@]}" >"$WORK/memcached.log" 2>&1 &
PIDS+=($!)
wait_for memcached 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MEMCACHED_PORT"
for kb in "${KBS[@]}"; do
	"${MCSET[@]}" "bench-${kb}k" "$WORK/www/img-${kb}k.png"
done

# --- the frontend and the node to measure -------------------------------------------------
CURL=(curl -fsS --cacert "$TLSDIR/ca.pem")
NODE_URL="$SCHEME://127.0.0.1:$NODE_PORT"
if [ "$TLS" = 1 ]; then
	# `memcache up`'s frontend serves plain HTTP only (up has no
	# --public-tls-cert), so a second frontend joins up's cluster with
	# its public listener on TLS.
	FE_URL="https://127.0.0.1:$FT_PORT"
	log "starting a frontend with public TLS on $FE_URL, joined to up's cluster"
	"$MC" --log-level warn frontend --name bench-tls-frontend \
		--http-addr "127.0.0.1:$FT_PORT" --cluster-addr "127.0.0.1:$FT_CLUSTER" --gossip-addr "127.0.0.1:$FT_GOSSIP" \
		--join "127.0.0.1:$((BASE + 201))" --gossip-key-file "$DATA/gossip-key" --cluster-secret-file "$DATA/cluster-secret" \
		--managers "https://127.0.0.1:$((BASE + 301))" --managers "https://127.0.0.1:$((BASE + 302))" --managers "https://127.0.0.1:$((BASE + 303))" \
		--db "$WORK/fe-tls/keys.db" --blob-dir "$WORK/fe-tls/blobs" \
		--tls-ca "$TLSDIR/ca.pem" --tls-cert "$TLSDIR/frontend.pem" --tls-key "$TLSDIR/frontend-key.pem" \
		--public-tls-cert "$TLSDIR/public.pem" --public-tls-key "$TLSDIR/public-key.pem" \
		>"$WORK/frontend-tls.log" 2>&1 &
	PIDS+=($!)
	wait_for "the TLS frontend" 60 "${CURL[@]}" "$FE_URL/healthz"
	NODE_MODE=(--tls-ca "$TLSDIR/ca.pem" --tls-cert "$TLSDIR/node.pem" --tls-key "$TLSDIR/node-key.pem")
	CURL_NODE=("${CURL[@]}" --cert "$TLSDIR/bench.pem" --key "$TLSDIR/bench-key.pem")
else
	FE_URL="http://127.0.0.1:$FE_PORT"
	NODE_MODE=(--insecure)
	CURL_NODE=("${CURL[@]}")
fi
# The node row measures a `memcache node` of the same build that follows no
# managers: it owns every region and holds no serving lease, so the row is
# the node's GET alone. (up's own node takes only mutual TLS, and under a
# saturating load on a small machine its lease can lapse: --up-node adds a
# row for it.)
log "starting memcache node ${NODE_MODE[0]} on $NODE_URL"
"$MC" --log-level warn node "${NODE_MODE[@]}" --name bench-node --http-addr "127.0.0.1:$NODE_PORT" \
	--gossip-addr "127.0.0.1:$NODE_GOSSIP" --cluster-secret-file "$DATA/cluster-secret" \
	>"$WORK/node.log" 2>&1 &
PIDS+=($!)
wait_for "the node" 30 "${CURL_NODE[@]}" "$NODE_URL/healthz"
for kb in "${KBS[@]}"; do
	"${CURL_NODE[@]}" -X PUT --data-binary "@$WORK/www/img-${kb}k.png" -H "X-Memcache-Secret: $SECRET" \
		-H "Content-Type: image/png" -H 'ETag: "bench"' "$NODE_URL/cache/bench-${kb}k"
done
for kb in "${KBS[@]}"; do
	wait_for "upload of bench-${kb}k" 60 "${CURL[@]}" -o /dev/null -F "key=bench-${kb}k" -F "file=@$WORK/www/img-${kb}k.png" "$FE_URL/api/upload"
done
UP_NODE_URL=""
if [ "$UP_NODE" = 1 ]; then
	for kb in "${KBS[@]}"; do
		owner=$("$DRIVER" owner -pool "https://127.0.0.1:$((BASE + 301))/v1/pool" -ca "$TLSDIR/ca.pem" \
			-cert "$TLSDIR/bench.pem" -key "$TLSDIR/bench-key.pem" -secret-file "$DATA/cluster-secret" "bench-${kb}k")
		if [ -n "$UP_NODE_URL" ] && [ "$owner" != "$UP_NODE_URL" ]; then
			log "the images have different owner nodes ($UP_NODE_URL, $owner): the table takes one node URL"
			exit 1
		fi
		UP_NODE_URL=$owner
	done
	log "the images' owner node in up: $UP_NODE_URL"
fi

# --- versions and the run's config ---------------------------------------------------------
NGINX_V=$(nginx -v 2>&1 | sed 's|.*nginx/||')
MEMCACHED_V=$(memcached -V | awk '{print $2}')
WRK_V=$({ wrk -v 2>&1 || true; } | awk 'NR == 1 {print $2}')
GO_V=$(go version | awk '{print $3}')

SIZES_JSON=""
for kb in "${KBS[@]}"; do
	SIZES_JSON+="${SIZES_JSON:+,}{\"name\": \"$kb KB\", \"slug\": \"${kb}k\", \"file\": \"$WORK/www/img-${kb}k.png\"}"
done
CLIENT_CERT="\"client_cert\": \"$TLSDIR/bench.pem\", \"client_key\": \"$TLSDIR/bench-key.pem\""
if [ "$TLS" = 1 ]; then
	NGINX_NAME="nginx $NGINX_V, static file, HTTPS"
	FE_NAME="frontend \`GET /images/{key}\`, cache hit, HTTPS"
	NODE_NAME="node \`GET /cache/{key}\`, mutual TLS"
	MEMCACHED_NAME="memcached $MEMCACHED_V \`get\`, TLS"
	MEMCACHED_TLS=true
else
	NGINX_NAME="nginx $NGINX_V, static file"
	FE_NAME="frontend \`GET /images/{key}\`, cache hit"
	NODE_NAME="node \`GET /cache/{key}\`"
	MEMCACHED_NAME="memcached $MEMCACHED_V \`get\`"
	MEMCACHED_TLS=false
fi
UP_NODE_JSON=""
if [ -n "$UP_NODE_URL" ]; then
	UP_NODE_JSON="{\"name\": \"node of up (owner, leased), mutual TLS\", \"kind\": \"http\", \"url\": \"$UP_NODE_URL/cache/bench-{size}\", $CLIENT_CERT,
     \"headers\": {\"X-Memcache-Secret\": \"$SECRET\"}, \"echo\": \"X-Memcache-Epoch\"},"
fi
cat >"$WORK/bench.json" <<EOF
{
  "ca": "$TLSDIR/ca.pem",
  "sizes": [$SIZES_JSON],
  "targets": [
    {"name": "$NGINX_NAME", "kind": "http", "baseline": true, "url": "$SCHEME://127.0.0.1:$NGINX_PORT/img-{size}.png"},
    {"name": "$FE_NAME", "kind": "http", "url": "$FE_URL/images/bench-{size}", "miss": {"X-Memcache-Source": "store"}},
    {"name": "$NODE_NAME", "kind": "http", "url": "$NODE_URL/cache/bench-{size}", $CLIENT_CERT,
     "headers": {"X-Memcache-Secret": "$SECRET"}, "echo": "X-Memcache-Epoch"},
    $UP_NODE_JSON
    {"name": "$MEMCACHED_NAME", "kind": "memcached", "addr": "127.0.0.1:$MEMCACHED_PORT", "key": "bench-{size}", "tls": $MEMCACHED_TLS}
  ]
}
EOF

# --- measure ------------------------------------------------------------------------------------
TITLE="Plain HTTP"
[ "$TLS" = 1 ] && TITLE="TLS"
log "measuring: $ROUNDS rounds of $ROUND per server and size, $CLIENTS clients"
RC=0
measure "$WORK/table.md" "$DRIVER" run -config "$WORK/bench.json" -round "$ROUND" -rounds "$ROUNDS" -clients "$CLIENTS" || RC=$?
TABLE=$(cat "$WORK/table.md")

WRK_TABLE=""
if [ "$WRK" = 1 ]; then
	# wrk_rate URL [HEADER]: wrk's Requests/sec, or why there is none.
	wrk_rate() {
		local out
		out=$(wrk -t2 -c16 -d"$WRK_DURATION" ${2:+-H "$2"} "$1" 2>&1) || { echo "wrk failed"; return; }
		if grep -q "Non-2xx" <<<"$out"; then
			echo "errors: $(grep Non-2xx <<<"$out" | xargs)"
			return
		fi
		awk '/Requests\/sec/ {s = sprintf("%d", $2 + 0.5); while (s ~ /[0-9]{4}/) sub(/[0-9]{3}($|,)/, ",&", s); print s}' <<<"$out"
	}
	WRK_TABLE="| wrk, 2 threads, 16 connections, $WRK_DURATION |"
	SEP="|---|"
	for kb in "${KBS[@]}"; do
		WRK_TABLE+=" $kb KB |"
		SEP+="---|"
	done
	WRK_TABLE+=$'\n'"$SEP"
	for row in nginx frontend node; do
		case $row in
		nginx) name=$NGINX_NAME url="$SCHEME://127.0.0.1:$NGINX_PORT/img-{size}.png" hdr="" ;;
		frontend) name=$FE_NAME url="$FE_URL/images/bench-{size}" hdr="" ;;
		node) name=$NODE_NAME url="$NODE_URL/cache/bench-{size}" hdr="X-Memcache-Secret: $SECRET" ;;
		esac
		line="| $name |"
		for kb in "${KBS[@]}"; do
			if [ "$row" = node ] && [ "$TLS" = 1 ]; then
				line+=" - (wrk cannot present a client certificate) |"
				continue
			fi
			log "wrk $row ${kb} KB"
			line+=" $(wrk_rate "${url//\{size\}/${kb}k}" "$hdr") |"
		done
		WRK_TABLE+=$'\n'"$line"
	done
fi

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
cat <<EOF

### $TITLE ($(date -u '+%Y-%m-%d %H:%M UTC'))

Machine: \`nproc\` = $(nproc), $CPU, Linux $(uname -r), $GO_V, nginx $NGINX_V (\`worker_processes auto\`, \`sendfile on\`),
memcached $MEMCACHED_V (4 threads), wrk $WRK_V. Command: \`bash bench/run.sh${ARGS[*]:+ ${ARGS[*]}}\`

$TABLE
EOF
if [ -n "$WRK_TABLE" ]; then
	printf '\nwrk (no byte check; the node with the cluster secret header):\n\n%s\n' "$WRK_TABLE"
fi
exit $RC
