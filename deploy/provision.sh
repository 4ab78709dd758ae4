#!/usr/bin/env bash
# provision.sh: installs and configures one memcache role on a host, the one
# way the Vagrant cluster and the network-namespace tests set hosts up.
#
# Usage: deploy/provision.sh STEP
#
# Host steps (run on the machine that holds the repository, once):
#   build      builds, into OUT (default .deploy/), static (CGO_ENABLED=0)
#              linux binaries memcache and versitygw for the guests
#              (GOARCH, default amd64), and host/memcache for this machine
#              (the tls step runs it).
#   secrets    makes the cluster's shared secrets in SECRETS_DIR (default
#              .deploy/secrets): gossip-key, cluster-secret, admin-token,
#              postgres-password, s3-access, s3-secret. Existing files are kept.
#   tls        makes the cluster CA in TLS_DIR (default .deploy/tls) with
#              "memcache tls ca create", then a certificate per entry of
#              TLS_HOSTS="NAME:ROLE:HOST[,HOST...] ..." with
#              "memcache tls cert create" (TLS_DIR/NAME.pem, NAME-key.pem).
#              Existing files are kept, so a rerun only adds new hosts.
#
# Role steps (run on each host, as root):
#   manager | node | frontend
#              installs MEMCACHE_BIN as $PREFIX/usr/local/bin/memcache,
#              TLS_DIR/{ca.pem,NAME.pem,NAME-key.pem} as
#              $PREFIX/etc/memcache/tls/{ca.pem,ROLE.pem,ROLE-key.pem}, the
#              secrets the role needs from SECRETS_DIR in
#              $PREFIX/etc/memcache/secrets/, writes
#              $PREFIX/etc/memcache/ROLE.env and installs
#              $PREFIX/etc/systemd/system/memcache-ROLE.service.
#   services   PostgreSQL (apt; listening on PRIVATE_ADDR, database and user
#              "memcache" with password auth from PRIVATE_NET) and versitygw
#              (VERSITYGW_BIN, or go install, as a systemd unit on
#              PRIVATE_ADDR:7070, bucket "memcache").
#
# Settings (environment):
#   PREFIX         root to install under (default /). Only with PREFIX=/ and
#                  a running systemd are units enabled and (re)started, and
#                  only then are packages installed; with another PREFIX the
#                  script needs no systemd, user, network or root.
#   MEMCACHE_BIN   the memcache binary to install (role steps), or to run
#                  (tls step; default .deploy/host/memcache).
#   TLS_DIR        directory with ca.pem and NAME.pem / NAME-key.pem.
#   TLS_CA_BUNDLE  the file installed as /etc/memcache/tls/ca.pem, the CAs
#                  this host trusts (default TLS_DIR/ca.pem; during a CA
#                  rotation, the old and the new CA concatenated).
#   TLS_NAME       NAME of this host's certificate (default: MEMCACHE_NAME,
#                  else the host name).
#   SECRETS_DIR    directory with the files the secrets step makes.
#   ADDR           this host's private address: the default of every
#                  listener and advertised address, on the default ports
#                  (manager 7200/7201/7300/7400, node 7100/7946, frontend
#                  8080/8081/7500). An IPv6 address is written in brackets
#                  where a port follows ([fd00::a]:7200).
#   PUBLIC_TLS=1   manager, frontend: serve the public listener over TLS with
#                  the host's certificate (advertised as https://).
#   SERVICES_ADDR  frontend: the services host; sets the PostgreSQL DSN, the
#                  S3 endpoint, bucket and keys from SECRETS_DIR.
#   MEMCACHE_*     any flag of the role, written to the environment file as
#                  given; they override what the script derives (MEMCACHE_BIN
#                  and MEMCACHE_TEST_* are not flags and are not written).
#   AWS_*          written to the environment file (AWS SDK:
#                  region, credentials, endpoints such as
#                  AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_ENDPOINT_URL_EC2).
#   PRIVATE_ADDR, PRIVATE_NET   services: listen address and client network.
#   VERSITYGW_BIN, VERSITYGW_VERSION   services: the gateway binary, or the
#                  version go install builds (the one .ci/install-versitygw.sh
#                  installs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PREFIX=${PREFIX:-/}
VERSITYGW_VERSION=${VERSITYGW_VERSION:-v1.8.0}
OUT=${OUT:-$repo/.deploy}
SECRETS_DIR=${SECRETS_DIR:-$OUT/secrets}
TLS_DIR=${TLS_DIR:-$OUT/tls}

die() {
	echo "provision.sh: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 2
}

# root is PREFIX without a trailing slash ("" for /), to prepend to paths.
root=${PREFIX%/}

# live is true when this run installs on the running system.
live() {
	[ "$PREFIX" = / ] && [ -d /run/systemd/system ]
}

changed=0

# put SRC DEST MODE: installs a file if its content or mode differs.
put() {
	local src=$1 dest=$2 mode=$3
	[ -f "$src" ] || die "$src: no such file"
	if [ -f "$dest" ] && cmp -s "$src" "$dest" &&
		[ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
		return 0
	fi
	mkdir -p "$(dirname "$dest")"
	install -m "$mode" "$src" "$dest.tmp"
	mv -f "$dest.tmp" "$dest"
	changed=1
}

# put_text DEST MODE: installs stdin as a file, like put.
put_text() {
	local tmp
	tmp=$(mktemp)
	cat >"$tmp"
	put "$tmp" "$1" "$2"
	rm -f "$tmp"
}

# hostport HOST PORT: HOST:PORT, an IPv6 address in brackets ([fd00::a]:7200);
# HOST may come bracketed already.
hostport() {
	local h=${1#\[}
	h=${h%\]}
	case $h in
	*:*) printf '[%s]:%s' "$h" "$2" ;;
	*) printf '%s:%s' "$h" "$2" ;;
	esac
}

random_hex() { # bytes
	od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# ---- host steps

# lock DIR: holds DIR.lock (a directory, so it works without flock) until
# the script exits: "vagrant up" may run its trigger for several VMs at once,
# and they must make one CA and one set of secrets.
lockdir=""
lock() {
	local i=0
	lockdir=$1.lock
	mkdir -p "$(dirname "$lockdir")"
	until mkdir "$lockdir" 2>/dev/null; do
		i=$((i + 1))
		[ "$i" -lt 1200 ] || die "$lockdir held for 2 minutes; remove it if no provision.sh is running"
		sleep 0.1
	done
	trap 'rmdir "$lockdir"' EXIT
}

step_build() {
	local arch=${GOARCH:-amd64}
	mkdir -p "$OUT/host"
	(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -o "$OUT/memcache" .)
	(cd "$repo" && env -u GOOS -u GOARCH go build -o "$OUT/host/memcache" .)
	echo "built $OUT/memcache (linux/$arch) and $OUT/host/memcache"
	if [ ! -x "$OUT/versitygw" ]; then
		# go install puts a cross-compiled binary in GOPATH/bin/GOOS_GOARCH
		# (and refuses GOBIN then): install into a scratch GOPATH that
		# shares the module cache, and take the binary from there.
		local tmp modcache
		tmp=$(mktemp -d)
		modcache=$(go env GOMODCACHE)
		CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOPATH=$tmp GOMODCACHE=$modcache GOBIN= \
			go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
		mv "$(find "$tmp/bin" -type f -name versitygw | head -n 1)" "$OUT/versitygw"
		chmod -R u+w "$tmp" && rm -rf "$tmp"
		echo "built $OUT/versitygw $VERSITYGW_VERSION (linux/$arch)"
	fi
}

step_secrets() {
	umask 077
	lock "$SECRETS_DIR"
	mkdir -p "$SECRETS_DIR"
	local f
	f=$SECRETS_DIR/gossip-key
	[ -s "$f" ] || head -c 32 /dev/urandom | base64 >"$f"
	for f in cluster-secret admin-token; do
		[ -s "$SECRETS_DIR/$f" ] || random_hex 24 >"$SECRETS_DIR/$f"
	done
	[ -s "$SECRETS_DIR/postgres-password" ] || random_hex 16 >"$SECRETS_DIR/postgres-password"
	[ -s "$SECRETS_DIR/s3-access" ] || echo "memcache$(random_hex 6)" >"$SECRETS_DIR/s3-access"
	[ -s "$SECRETS_DIR/s3-secret" ] || random_hex 24 >"$SECRETS_DIR/s3-secret"
	echo "secrets in $SECRETS_DIR"
}

step_tls() {
	local bin=${MEMCACHE_BIN:-$OUT/host/memcache}
	[ -x "$bin" ] || die "MEMCACHE_BIN=$bin is not an executable; build it first (deploy/provision.sh build)"
	[ -n "${TLS_HOSTS:-}" ] || die "TLS_HOSTS is empty; want NAME:ROLE:HOST[,HOST...] entries"
	lock "$TLS_DIR"
	mkdir -p "$TLS_DIR"
	chmod 700 "$TLS_DIR"
	if [ ! -f "$TLS_DIR/ca.pem" ]; then
		"$bin" tls ca create --dir "$TLS_DIR"
	fi
	local entry name role hosts h args
	for entry in $TLS_HOSTS; do
		IFS=: read -r name role hosts <<<"$entry"
		[ -n "$name" ] && [ -n "$role" ] && [ -n "$hosts" ] || die "TLS_HOSTS entry $entry: want NAME:ROLE:HOST[,HOST...]"
		[ -f "$TLS_DIR/$name.pem" ] && continue
		args=()
		IFS=, read -ra hs <<<"$hosts"
		for h in "${hs[@]}"; do
			args+=(--host "$h")
		done
		"$bin" tls cert create --dir "$TLS_DIR" --role "$role" --name "$name" "${args[@]}"
	done
	echo "certificates in $TLS_DIR"
}

# ---- role steps

# setting NAME VALUE: the default of variable NAME, unless it is set.
setting() {
	if [ -z "${!1+x}" ]; then
		printf -v "$1" '%s' "$2"
		export "${1?}"
	fi
}

# env_line NAME VALUE: one line of a systemd environment file, the value
# double-quoted with \ " ` $ escaped.
env_line() {
	local v=$2
	case $v in *$'\n'*) die "$1: a value may not hold a newline" ;; esac
	v=${v//\\/\\\\}
	v=${v//\"/\\\"}
	v=${v//\`/\\\`}
	v=${v//\$/\\\$}
	printf '%s="%s"\n' "$1" "$v"
}

# role_settings ROLE: the derived defaults of the role's variables.
role_settings() {
	local role=$1 scheme=http
	local cred=/run/credentials/memcache-$role.service
	[ "${PUBLIC_TLS:-0}" = 1 ] && scheme=https
	if [ -n "${ADDR:-}" ]; then
		case $role in
		manager)
			setting MEMCACHE_HTTP_ADDR "$(hostport "$ADDR" 7200)"
			setting MEMCACHE_ADVERTISE_HTTP "$scheme://$(hostport "$ADDR" 7200)"
			setting MEMCACHE_CLUSTER_ADDR "$(hostport "$ADDR" 7201)"
			setting MEMCACHE_ADVERTISE_CLUSTER "https://$(hostport "$ADDR" 7201)"
			setting MEMCACHE_RAFT_ADDR "$(hostport "$ADDR" 7300)"
			setting MEMCACHE_RAFT_ADVERTISE "$(hostport "$ADDR" 7300)"
			setting MEMCACHE_GOSSIP_ADDR "$(hostport "$ADDR" 7400)"
			setting MEMCACHE_GOSSIP_ADVERTISE "$(hostport "$ADDR" 7400)"
			;;
		node)
			setting MEMCACHE_HTTP_ADDR "$(hostport "$ADDR" 7100)"
			setting MEMCACHE_ADVERTISE_HTTP "https://$(hostport "$ADDR" 7100)"
			setting MEMCACHE_GOSSIP_ADDR "$(hostport "$ADDR" 7946)"
			setting MEMCACHE_GOSSIP_ADVERTISE "$(hostport "$ADDR" 7946)"
			;;
		frontend)
			setting MEMCACHE_HTTP_ADDR "$(hostport "$ADDR" 8080)"
			setting MEMCACHE_ADVERTISE_HTTP "$scheme://$(hostport "$ADDR" 8080)"
			setting MEMCACHE_CLUSTER_ADDR "$(hostport "$ADDR" 8081)"
			setting MEMCACHE_ADVERTISE_CLUSTER "https://$(hostport "$ADDR" 8081)"
			setting MEMCACHE_GOSSIP_ADDR "$(hostport "$ADDR" 7500)"
			setting MEMCACHE_GOSSIP_ADVERTISE "$(hostport "$ADDR" 7500)"
			;;
		esac
	fi
	setting MEMCACHE_TLS_CA /etc/memcache/tls/ca.pem
	setting MEMCACHE_TLS_CERT "/etc/memcache/tls/$role.pem"
	setting MEMCACHE_TLS_KEY "$cred/tls-key"
	setting MEMCACHE_GOSSIP_KEY_FILE "$cred/gossip-key"
	setting MEMCACHE_CLUSTER_SECRET_FILE "$cred/cluster-secret"
	if [ "${PUBLIC_TLS:-0}" = 1 ] && [ "$role" != node ]; then
		setting MEMCACHE_PUBLIC_TLS_CERT "/etc/memcache/tls/$role.pem"
		setting MEMCACHE_PUBLIC_TLS_KEY "$cred/tls-key"
	fi
	case $role in
	manager)
		setting MEMCACHE_DATA_DIR /var/lib/memcache/manager
		setting MEMCACHE_ADMIN_TOKEN_FILE "$cred/admin-token"
		setting MEMCACHE_PROVISIONER static
		;;
	frontend)
		if [ -n "${SERVICES_ADDR:-}" ]; then
			local pw
			pw=$(cat "$SECRETS_DIR/postgres-password") || die "SERVICES_ADDR needs $SECRETS_DIR/postgres-password"
			setting MEMCACHE_DB "postgres://memcache:$pw@$(hostport "$SERVICES_ADDR" 5432)/memcache?sslmode=require"
			setting MEMCACHE_S3_ENDPOINT "http://$(hostport "$SERVICES_ADDR" 7070)"
			setting MEMCACHE_S3_BUCKET memcache
			setting MEMCACHE_S3_REGION us-east-1
			setting AWS_ACCESS_KEY_ID "$(cat "$SECRETS_DIR/s3-access")"
			setting AWS_SECRET_ACCESS_KEY "$(cat "$SECRETS_DIR/s3-secret")"
		fi
		setting MEMCACHE_DB /var/lib/memcache/frontend/keys.db
		if [ -z "${MEMCACHE_S3_BUCKET:-}" ]; then
			setting MEMCACHE_BLOB_DIR /var/lib/memcache/frontend/blobs
		fi
		;;
	esac
}

# env_file ROLE: the role's environment file, from the environment.
env_file() {
	local role=$1 name
	echo "# memcache $role: written by deploy/provision.sh; rerun it to change."
	echo "# See deploy/env/$role.env.example for what each variable means."
	compgen -e | LC_ALL=C sort | while read -r name; do
		case $name in
		MEMCACHE_BIN | MEMCACHE_TEST_*) ;;
		MEMCACHE_*) env_line "$name" "${!name}" ;;
		AWS_*) env_line "$name" "${!name}" ;;
		esac
	done
}

step_role() {
	local role=$1
	local bin=${MEMCACHE_BIN:-}
	[ -n "$bin" ] || die "MEMCACHE_BIN is not set: the memcache binary to install"
	[ -f "$bin" ] || die "MEMCACHE_BIN=$bin: no such file"
	local name=${TLS_NAME:-${MEMCACHE_NAME:-$(uname -n)}}
	local ca=${TLS_CA_BUNDLE:-$TLS_DIR/ca.pem}
	[ -f "$ca" ] || die "$ca: no such file (the CA certificates to trust)"
	for f in "$name.pem" "$name-key.pem"; do
		[ -f "$TLS_DIR/$f" ] || die "$TLS_DIR/$f: no such file (TLS_DIR holds ca.pem and this host's NAME.pem, NAME-key.pem; NAME=$name)"
	done
	local secrets=(gossip-key cluster-secret)
	[ "$role" = manager ] && secrets+=(admin-token)
	for f in "${secrets[@]}"; do
		[ -s "$SECRETS_DIR/$f" ] || die "$SECRETS_DIR/$f: no such file (run deploy/provision.sh secrets)"
	done

	role_settings "$role"
	umask 022
	put "$bin" "$root/usr/local/bin/memcache" 0755
	mkdir -p "$root/etc/memcache/tls" "$root/etc/memcache/secrets"
	chmod 700 "$root/etc/memcache/secrets"
	put "$ca" "$root/etc/memcache/tls/ca.pem" 0644
	put "$TLS_DIR/$name.pem" "$root/etc/memcache/tls/$role.pem" 0644
	put "$TLS_DIR/$name-key.pem" "$root/etc/memcache/tls/$role-key.pem" 0600
	for f in "${secrets[@]}"; do
		put "$SECRETS_DIR/$f" "$root/etc/memcache/secrets/$f" 0600
	done
	local content
	content=$(env_file "$role")
	put_text "$root/etc/memcache/$role.env" 0600 <<<"$content"
	put "$here/systemd/memcache-$role.service" "$root/etc/systemd/system/memcache-$role.service" 0644
	echo "installed memcache $role under $PREFIX"
	activate "memcache-$role.service"
}

# activate UNIT: enables and starts the unit on a live system, restarting it
# when this run changed any of its files.
activate() {
	if ! live; then
		return 0
	fi
	systemctl daemon-reload
	systemctl enable "$1"
	if [ "$changed" = 1 ]; then
		systemctl restart "$1"
	else
		systemctl start "$1"
	fi
	systemctl --no-pager --lines=0 status "$1" || true
}

# ---- services: PostgreSQL and versitygw

step_services() {
	[ -n "${PRIVATE_ADDR:-}" ] || die "PRIVATE_ADDR is not set: the services host's private address"
	[ -n "${PRIVATE_NET:-}" ] || die "PRIVATE_NET is not set: the network clients connect from (CIDR)"
	for f in postgres-password s3-access s3-secret; do
		[ -s "$SECRETS_DIR/$f" ] || die "$SECRETS_DIR/$f: no such file (run deploy/provision.sh secrets)"
	done
	if [ "$PREFIX" = / ]; then
		setup_postgres
	else
		echo "PREFIX=$PREFIX: PostgreSQL is only set up on the live system; skipped"
	fi
	setup_versitygw
}

setup_postgres() {
	if ! command -v pg_lsclusters >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
		apt-get update
		DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql curl
	fi
	local ver conf hba
	ver=$(pg_lsclusters --no-header | awk '$2 == "main" { print $1; exit }')
	[ -n "$ver" ] || die "no PostgreSQL cluster main"
	conf=/etc/postgresql/$ver/main
	# Debian's postgresql.conf reads conf.d; TLS is on with the snakeoil
	# certificate, so clients can ask for sslmode=require.
	put_text "$conf/conf.d/memcache.conf" 0644 <<EOF
# written by deploy/provision.sh services
listen_addresses = 'localhost,$PRIVATE_ADDR'
password_encryption = scram-sha-256
EOF
	hba="host memcache memcache $PRIVATE_NET scram-sha-256"
	if ! grep -qxF "$hba" "$conf/pg_hba.conf"; then
		echo "$hba" >>"$conf/pg_hba.conf"
		changed=1
	fi
	# postgresql.service starts every cluster; the restart is of this one.
	systemctl enable postgresql.service
	if [ "$changed" = 1 ]; then
		systemctl restart "postgresql@$ver-main"
	else
		systemctl start "postgresql@$ver-main"
	fi
	local pw
	pw=$(cat "$SECRETS_DIR/postgres-password")
	# The password goes in through psql's variable quoting, never into SQL text.
	(cd / && runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -v pw="$pw" <<'EOF'
SELECT 'CREATE ROLE memcache LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'memcache') \gexec
ALTER ROLE memcache PASSWORD :'pw';
SELECT 'CREATE DATABASE memcache OWNER memcache' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'memcache') \gexec
EOF
	)
	echo "PostgreSQL $ver on $PRIVATE_ADDR:5432, database memcache"
}

setup_versitygw() {
	local bin=${VERSITYGW_BIN:-}
	if [ -z "$bin" ]; then
		command -v go >/dev/null 2>&1 || die "VERSITYGW_BIN is not set and there is no go to build versitygw $VERSITYGW_VERSION (deploy/provision.sh build makes one)"
		local gobin
		gobin=$(mktemp -d)
		GOBIN=$gobin CGO_ENABLED=0 go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
		bin=$gobin/versitygw
	fi
	changed=0
	put "$bin" "$root/usr/local/bin/versitygw" 0755
	mkdir -p "$root/etc/memcache"
	{
		echo "# versitygw: written by deploy/provision.sh services; rerun it to change."
		env_line VGW_ADDR "$(hostport "$PRIVATE_ADDR" 7070)"
		env_line VGW_REGION us-east-1
		env_line VGW_ACCESS "$(cat "$SECRETS_DIR/s3-access")"
		env_line VGW_SECRET "$(cat "$SECRETS_DIR/s3-secret")"
	} | put_text "$root/etc/memcache/versitygw.env" 0600
	put "$here/systemd/versitygw.service" "$root/etc/systemd/system/versitygw.service" 0644
	activate versitygw.service
	if live; then
		make_bucket memcache
	fi
}

# make_bucket NAME: creates the bucket (S3 CreateBucket, signed by curl);
# an existing bucket of ours is fine.
make_bucket() {
	local url i code
	url=http://$(hostport "$PRIVATE_ADDR" 7070)/$1
	for i in $(seq 1 30); do
		# The payload hash header is the SHA-256 of the empty body.
		code=$(curl -g -s -o /dev/null -w '%{http_code}' -X PUT --data-binary '' \
			-H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
			--aws-sigv4 aws:amz:us-east-1:s3 \
			--user "$(cat "$SECRETS_DIR/s3-access"):$(cat "$SECRETS_DIR/s3-secret")" "$url") || code=000
		case $code in
		200 | 409)
			echo "bucket $1 at http://$(hostport "$PRIVATE_ADDR" 7070)"
			return 0
			;;
		esac
		sleep 1
	done
	die "could not create bucket $1 at $url (last HTTP status $code)"
}

case ${1:-} in
build) step_build ;;
secrets) step_secrets ;;
tls) step_tls ;;
manager | node | frontend) step_role "$1" ;;
services) step_services ;;
*) usage ;;
esac
