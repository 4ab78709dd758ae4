#!/usr/bin/env bash
# aws.sh: brings a memcache cluster up on AWS and takes it down again
# (docs/aws.md explains every piece and its manual equivalent).
#
# Usage: deploy/aws/aws.sh up | down | status
#
#   up      creates, in the region's default VPC, everything tagged
#           memcache:cluster=CLUSTER: IAM roles and instance profiles
#           (manager, node, frontend; policies from deploy/aws/*.json), a
#           private encrypted S3 bucket, an S3 gateway endpoint (the
#           instances download the memcache binary through it), security
#           groups, an RDS PostgreSQL instance, the nodes' launch template,
#           three managers (--provisioner ec2) and one frontend, each with a
#           network interface and an Elastic IP. The CA, the certificates
#           and the secrets are made here, in STATE_DIR, with
#           "memcache tls ..." and deploy/provision.sh secrets; each instance
#           runs deploy/provision.sh ROLE from its user-data, as the Vagrant
#           VMs do. Rerunning up keeps what exists and adds what is missing.
#   down    deletes everything tagged memcache:cluster=CLUSTER (the nodes
#           the managers launched included), in dependency order: the
#           instances, addresses and interfaces, the database (its data is
#           gone, unless FINAL_SNAPSHOT=1), the launch template, the
#           security groups, the bucket and every image in it, the
#           endpoint, the IAM roles. Safe to rerun; it leaves STATE_DIR.
#   status  lists what exists, read-only, and the URLs.
#
# Settings (environment):
#   CLUSTER        the memcache:cluster tag value and the prefix of every
#                  name: CLUSTER-manager, CLUSTER-node, ... (default memcache;
#                  a lower-case letter, then up to 19 letters, digits, '-').
#   REGION         AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, or
#                  the CLI's configured region).
#   ADMIN_CIDR     up: who may open the manager UI, port 7200, e.g.
#                  203.0.113.7/32 (required).
#   PUBLIC_CIDR    up: who may open the frontend, port 8080 (0.0.0.0/0).
#   STATE_DIR      local files: CA, certificates, secrets, rendered policies,
#                  user-data (default .deploy/aws/CLUSTER). Keep it private.
#   MEMCACHE_BIN   the linux/amd64 binary the instances run (default
#                  .deploy/memcache; deploy/provision.sh build makes it).
#   TLS_BIN        the binary run here for "memcache tls" (default
#                  .deploy/host/memcache).
#   INSTANCE_TYPE  managers and frontend (t3.small); NODE_INSTANCE_TYPE
#                  nodes (t3.small); NODES initial pool size (1).
#   AMI            image for every instance; if blank, looked up from the
#                  public SSM parameter AMI_PARAM (Debian 12:
#                  /aws/service/debian/release/12/latest/amd64; Amazon Linux
#                  2023: /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64).
#   VPC, SUBNETS   a VPC and its subnets (space-separated) instead of the
#                  default VPC and its default subnets.
#   DB_INSTANCE_CLASS (db.t4g.micro), DB_STORAGE_GB (20), DB_ENGINE_VERSION
#                  (blank: RDS's default PostgreSQL).
#   RDS_CA_BUNDLE  a file with the RDS CA bundle (default: downloaded from
#                  truststore.pki.rds.amazonaws.com for REGION).
#   METRICS        embedded (default) or cloudwatch, for the managers.
#   PUBLIC_TLS     1 (default): the manager UI and the frontend serve HTTPS
#                  with their cluster certificate; 0: plain HTTP.
#   NODE_CERT_DAYS validity of the shared EC2 node certificate (90).
#   FINAL_SNAPSHOT down: 1 keeps a final RDS snapshot (not deleted by down).
#   DRY_RUN=1      nothing is changed: every aws command that would change
#                  something (and every wait) is printed on stdout as
#                  "dry-run: aws ...", with placeholder ids for what it would
#                  have created. Read-only look-ups (account, VPC, AMI,
#                  existing resources) still run "aws" and fall back to
#                  placeholders when that fails, so no AWS account is needed.
#                  Local files (secrets, certificates, user-data) are made in
#                  STATE_DIR as in a real run.
set -euo pipefail
umask 077

here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
repo=$(dirname "$deploy")

CLUSTER=${CLUSTER:-memcache}
REGION=${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}
STATE_DIR=${STATE_DIR:-$repo/.deploy/aws/$CLUSTER}
MEMCACHE_BIN=${MEMCACHE_BIN:-$repo/.deploy/memcache}
TLS_BIN=${TLS_BIN:-$repo/.deploy/host/memcache}
ADMIN_CIDR=${ADMIN_CIDR:-}
PUBLIC_CIDR=${PUBLIC_CIDR:-0.0.0.0/0}
INSTANCE_TYPE=${INSTANCE_TYPE:-t3.small}
NODE_INSTANCE_TYPE=${NODE_INSTANCE_TYPE:-t3.small}
NODES=${NODES:-1}
AMI=${AMI:-}
AMI_PARAM=${AMI_PARAM:-/aws/service/debian/release/12/latest/amd64}
VPC=${VPC:-}
SUBNETS=${SUBNETS:-}
DB_INSTANCE_CLASS=${DB_INSTANCE_CLASS:-db.t4g.micro}
DB_STORAGE_GB=${DB_STORAGE_GB:-20}
DB_ENGINE_VERSION=${DB_ENGINE_VERSION:-}
RDS_CA_BUNDLE=${RDS_CA_BUNDLE:-}
METRICS=${METRICS:-embedded}
PUBLIC_TLS=${PUBLIC_TLS:-1}
NODE_CERT_DAYS=${NODE_CERT_DAYS:-90}
FINAL_SNAPSHOT=${FINAL_SNAPSHOT:-0}
DRY_RUN=${DRY_RUN:-0}
export AWS_PAGER=""

# The S3 key prefix of the images (the frontend's --s3-prefix) and of the
# memcache binary the instances download.
S3_PREFIX=memcache/
RELEASE_PREFIX=release/
# The three managers.
MANAGERS=(m1 m2 m3)

# Ports (docs/aws.md#security-groups; the test checks both against each other).
PORT_NODE_HTTP=7100
PORT_NODE_GOSSIP=7946
PORT_MANAGER_HTTP=7200
PORT_MANAGER_CLUSTER=7201
PORT_MANAGER_RAFT=7300
PORT_MANAGER_GOSSIP=7400
PORT_FRONTEND_HTTP=8080
PORT_FRONTEND_CLUSTER=8081
PORT_FRONTEND_GOSSIP=7500
PORT_POSTGRES=5432

say() {
	echo "aws.sh: $*" >&2
}

die() {
	say "$*"
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 2
}

dry() {
	[ "$DRY_RUN" = 1 ]
}

# fd 3 is the script's stdout: dry-run lines go there even from inside $(...).
exec 3>&1

# show CMD...: prints a command as "dry-run: CMD", each word shell-quoted.
show() {
	{
		printf 'dry-run:'
		printf ' %q' "$@"
		printf '\n'
	} >&3
}

# awsr ARGS...: aws with this run's region.
awsr() {
	aws "$@" --region "$REGION"
}

# change PLACEHOLDER ARGS...: an aws command that changes something; prints
# its output (--output text). With DRY_RUN=1 it prints the command and
# outputs PLACEHOLDER instead.
change() {
	local placeholder=$1
	shift
	if dry; then
		show aws "$@" --region "$REGION"
		[ -z "$placeholder" ] || printf '%s\n' "$placeholder"
		return 0
	fi
	awsr "$@"
}

# change_ok PATTERN ARGS...: change, where an error matching PATTERN (an
# extended regular expression, e.g. a duplicate rule) counts as done.
change_ok() {
	local pattern=$1
	shift
	if dry; then
		show aws "$@" --region "$REGION"
		return 0
	fi
	local err rc=0
	err=$(awsr "$@" 2>&1 >/dev/null) || rc=$?
	if [ "$rc" != 0 ]; then
		if grep -qE "$pattern" <<<"$err"; then
			return 0
		fi
		printf '%s\n' "$err" >&2
		return "$rc"
	fi
}

# wait_for ARGS...: an "aws ... wait ..." command; printed with DRY_RUN=1.
wait_for() {
	if dry; then
		show aws "$@" --region "$REGION"
		return 0
	fi
	awsr "$@"
}

# lookup PLACEHOLDER ARGS...: a read-only aws command (--output text);
# prints its output, "None" as nothing. A failure stops the run, except with
# DRY_RUN=1, where it prints PLACEHOLDER.
lookup() {
	local placeholder=$1 out
	shift
	if out=$(awsr "$@" 2>"$STATE_DIR/.lookup-err"); then
		[ "$out" = None ] && out=""
		printf '%s\n' "$out" | sed -e 's/^None$//'
		return 0
	fi
	if dry; then
		say "dry run: look-up failed, using $placeholder: aws $* ($(tr '\n' ' ' <"$STATE_DIR/.lookup-err"))"
		printf '%s\n' "$placeholder"
		return 0
	fi
	cat "$STATE_DIR/.lookup-err" >&2
	die "look-up failed: aws $*"
}

# probe ARGS...: a read-only aws command that tells whether something
# exists; prints its output and succeeds if it does. "Not found" errors mean
# it does not; any other error stops the run (with DRY_RUN=1 it counts as
# not found).
probe() {
	local out
	if out=$(awsr "$@" 2>"$STATE_DIR/.lookup-err"); then
		[ "$out" = None ] && out=""
		printf '%s\n' "$out"
		return 0
	fi
	if grep -qE 'NoSuchEntity|NotFound|Not Found|NoSuchBucket|\(404\)' "$STATE_DIR/.lookup-err" || dry; then
		return 1
	fi
	cat "$STATE_DIR/.lookup-err" >&2
	die "look-up failed: aws $*"
}

# ---- names and tags

names() {
	# The name must suit every resource it names: an RDS identifier starts
	# with a letter, has no "--" and does not end with "-".
	[[ $CLUSTER =~ ^[a-z][a-z0-9-]{0,19}$ && $CLUSTER != *--* && $CLUSTER != *- ]] ||
		die "CLUSTER=$CLUSTER: want a lower-case letter, then up to 19 letters, digits and single '-'"
	case $METRICS in embedded | cloudwatch) ;; *) die "METRICS=$METRICS: want embedded or cloudwatch" ;; esac
	[[ $NODES =~ ^[1-8]$ ]] || die "NODES=$NODES: want 1..8"
	mkdir -p "$STATE_DIR"
	if [ -z "$REGION" ]; then
		REGION=$(aws configure get region 2>/dev/null || true)
	fi
	[ -n "$REGION" ] || die "no region: set REGION (or AWS_REGION)"
	[[ $REGION =~ ^[a-z0-9-]+$ ]] || die "REGION=$REGION: not a region name"
	PREFIX=$CLUSTER
	ROLE_MANAGER=$PREFIX-manager
	ROLE_NODE=$PREFIX-node
	ROLE_FRONTEND=$PREFIX-frontend
	DB_ID=$PREFIX
	LT_NAME=$PREFIX-node
	ACCOUNT=$(lookup 123456789012 sts get-caller-identity --query Account --output text)
	BUCKET=$PREFIX-$ACCOUNT-$REGION
	# EC2 names instances ip-A-B-C-D.ec2.internal in us-east-1 and
	# ip-A-B-C-D.REGION.compute.internal elsewhere; nodes advertise it.
	if [ "$REGION" = us-east-1 ]; then
		NODE_DOMAIN=ec2.internal
	else
		NODE_DOMAIN=$REGION.compute.internal
	fi
}

# tags ROLE [MEMBER]: the tag list of a resource, as JSON. Name is
# memcache-CLUSTER-MEMBER (or -ROLE), as on the nodes the managers launch.
tags() {
	local t='{"Key":"memcache:cluster","Value":"'$CLUSTER'"}'
	[ -z "$1" ] || t+=',{"Key":"memcache:role","Value":"'$1'"}'
	if [ -n "${2:-}" ]; then
		t+=',{"Key":"memcache:member","Value":"'$2'"}'
		t+=',{"Key":"Name","Value":"memcache-'$CLUSTER-$2'"}'
	elif [ -n "$1" ]; then
		t+=',{"Key":"Name","Value":"memcache-'$CLUSTER-$1'"}'
	fi
	printf '[%s]' "$t"
}

# tagspec TYPE[,TYPE...] ROLE [MEMBER]: --tag-specifications JSON.
tagspec() {
	local types=$1 out="" t
	shift
	IFS=, read -ra ts <<<"$types"
	for t in "${ts[@]}"; do
		[ -z "$out" ] || out+=,
		out+='{"ResourceType":"'$t'","Tags":'$(tags "$@")'}'
	done
	printf '[%s]' "$out"
}

# filters ROLE [MEMBER]: describe-* filters for this cluster's resources.
filters() {
	printf '%s\n' "Name=tag:memcache:cluster,Values=$CLUSTER"
	[ -z "${1:-}" ] || printf '%s\n' "Name=tag:memcache:role,Values=$1"
	[ -z "${2:-}" ] || printf '%s\n' "Name=tag:memcache:member,Values=$2"
}

# render FILE: deploy/aws/FILE with its ${VAR} placeholders filled in, as
# STATE_DIR/policies/FILE; prints that path.
render() {
	local file=$1 text var pat
	text=$(<"$here/$file")
	for var in REGION ACCOUNT CLUSTER VPC BUCKET S3_PREFIX VPCE; do
		[ -n "${!var:-}" ] || continue
		pat="\${$var}"
		text=${text//"$pat"/"${!var}"}
	done
	if [[ $text == *'${'* ]]; then
		die "$file: a placeholder has no value yet: $(grep -o '\${[A-Z_]*}' <<<"$text" | sort -u | tr '\n' ' ')"
	fi
	mkdir -p "$STATE_DIR/policies"
	printf '%s\n' "$text" >"$STATE_DIR/policies/$file"
	printf '%s\n' "$STATE_DIR/policies/$file"
}

# ---- look-ups: what the script cannot know

network() {
	if [ -z "$VPC" ]; then
		VPC=$(lookup vpc-DRYRUN ec2 describe-vpcs --filters Name=isDefault,Values=true \
			--query 'Vpcs[0].VpcId' --output text)
		[ -n "$VPC" ] || die "$REGION has no default VPC: set VPC and SUBNETS"
		if [ -z "$SUBNETS" ]; then
			SUBNETS=$(lookup "subnet-DRYRUNa subnet-DRYRUNb" ec2 describe-subnets \
				--filters "Name=vpc-id,Values=$VPC" Name=default-for-az,Values=true \
				--query 'Subnets[].SubnetId' --output text)
		fi
	elif [ -z "$SUBNETS" ]; then
		SUBNETS=$(lookup "subnet-DRYRUNa subnet-DRYRUNb" ec2 describe-subnets \
			--filters "Name=vpc-id,Values=$VPC" --query 'Subnets[].SubnetId' --output text)
	fi
	read -ra SUBNET_LIST <<<"$(echo $SUBNETS)"
	[ "${#SUBNET_LIST[@]}" -ge 2 ] || die "VPC $VPC: RDS needs subnets in at least two availability zones, found: ${SUBNET_LIST[*]:-none}"
	MAIN_RT=$(lookup rtb-DRYRUN ec2 describe-route-tables \
		--filters "Name=vpc-id,Values=$VPC" Name=association.main,Values=true \
		--query 'RouteTables[0].RouteTableId' --output text)
}

image() {
	if [ -z "$AMI" ]; then
		AMI=$(lookup ami-DRYRUN ssm get-parameter --name "$AMI_PARAM" --query Parameter.Value --output text)
	fi
	local root
	root=$(lookup "/dev/xvda 8" ec2 describe-images --image-ids "$AMI" \
		--query 'Images[0].[RootDeviceName,BlockDeviceMappings[0].Ebs.VolumeSize]' --output text)
	read -r ROOT_DEVICE ROOT_GB <<<"$root"
	[ -n "$ROOT_DEVICE" ] && [ -n "$ROOT_GB" ] || die "AMI $AMI: no root device found"
}

# ---- local files: secrets, certificates, user-data

secrets() {
	SECRETS_DIR=$STATE_DIR/secrets "$deploy/provision.sh" secrets >&2
	TLS_DIR=$STATE_DIR/tls
	mkdir -p "$TLS_DIR"
	[ -x "$TLS_BIN" ] || die "TLS_BIN=$TLS_BIN is not an executable; build it (deploy/provision.sh build)"
	[ -f "$MEMCACHE_BIN" ] || die "MEMCACHE_BIN=$MEMCACHE_BIN: no such file; build it (deploy/provision.sh build)"
	if [ ! -f "$TLS_DIR/ca.pem" ]; then
		"$TLS_BIN" tls ca create --dir "$TLS_DIR" >&2
	fi
	# One certificate for every node the managers launch: nodes advertise
	# their EC2 private DNS name (IMDS local-hostname).
	if [ ! -f "$TLS_DIR/ec2-node.pem" ]; then
		"$TLS_BIN" tls cert create --dir "$TLS_DIR" --role node --name ec2-node \
			--host "*.$NODE_DOMAIN" --days "$NODE_CERT_DAYS" >&2
	fi
	BINARY_SHA256=$(sha256sum "$MEMCACHE_BIN" | cut -d' ' -f1)
}

# cert NAME ROLE HOST...: STATE_DIR/tls/NAME.pem unless it exists.
cert() {
	local name=$1 role=$2 args=() h
	shift 2
	[ -f "$TLS_DIR/$name.pem" ] && return 0
	for h in "$@"; do
		args+=(--host "$h")
	done
	"$TLS_BIN" tls cert create --dir "$TLS_DIR" --role "$role" --name "$name" "${args[@]}" >&2
}

EOF_MARK=__MEMCACHE_AWS_EOF__

# ud_file DEST MODE SRC: user-data lines that install SRC's content as DEST.
ud_file() {
	local dest=$1 mode=$2 src=$3
	[ -f "$src" ] || die "$src: no such file"
	! grep -q "$EOF_MARK" "$src" || die "$src holds $EOF_MARK"
	# DEST is written as given inside double quotes: "$w/..." expands on the host.
	printf 'put "%s" %s <<'\''%s'\''\n' "$dest" "$mode" "$EOF_MARK"
	cat "$src"
	[ -z "$(tail -c 1 "$src")" ] || echo
	printf '%s\n' "$EOF_MARK"
}

# userdata ROLE MEMBER CERT ENV... : writes STATE_DIR/userdata/MEMBER.gz,
# the gzip-compressed script (cloud-init unpacks it) that installs this
# host's files and runs deploy/provision.sh ROLE with the ENV assignments.
userdata() {
	local role=$1 member=$2 certname=$3 kv
	shift 3
	local dir=$STATE_DIR/userdata
	mkdir -p "$dir"
	{
		cat <<EOF
#!/bin/bash
# memcache $role $member of cluster $CLUSTER: user-data written by deploy/aws/aws.sh up.
# It holds this host's TLS key and the cluster's secrets: whoever can read
# this instance's user-data can read them (docs/aws.md, "Node certificates").
# It runs at the first boot and, through the per-boot hook it installs, at
# every boot after (so stop, modify-instance-attribute --user-data, start
# changes the host).
EOF
		cat <<'EOF'
set -euo pipefail
umask 077
# PREFIX (default /): the root to install under, as for provision.sh; only
# with PREFIX=/ are services restarted (a test runs this in a directory).
root=${PREFIX:-/}
root=${root%/}
w=$root/var/lib/memcache-aws
(umask 022 && mkdir -p "$(dirname "$w")")
mkdir -p "$w"
live() {
	[ -z "$root" ] && [ -d /run/systemd/system ]
}
changed=0
# put DEST MODE: installs stdin as DEST; changed=1 when it differs.
put() {
	local tmp
	# Directories as provision.sh makes them (0755): the services read the
	# certificates in /etc/memcache/tls in place.
	(umask 022 && mkdir -p "$(dirname "$1")")
	tmp=$(mktemp "$1.XXXXXX")
	cat >"$tmp"
	chmod "$2" "$tmp"
	if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
		rm -f "$tmp"
		return 0
	fi
	mv -f "$tmp" "$1"
	case $1 in "$w"/*) ;; *) changed=1 ;; esac
}
# fetch URL FILE: downloads with retries (python3 is on every cloud-init image).
fetch() {
	python3 - "$1" "$2" <<'PY'
import sys, time, urllib.request
url, out = sys.argv[1], sys.argv[2]
for attempt in range(60):
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
            while True:
                b = r.read(1 << 20)
                if not b:
                    break
                f.write(b)
        sys.exit(0)
    except Exception as e:
        print("fetch %s: %s; retrying" % (url, e), file=sys.stderr)
        time.sleep(5)
sys.exit(1)
PY
}
EOF
		ud_file "\$w/deploy/provision.sh" 0755 "$deploy/provision.sh"
		ud_file "\$w/deploy/systemd/memcache-$role.service" 0644 "$deploy/systemd/memcache-$role.service"
		ud_file "\$w/tls/ca.pem" 0644 "$TLS_DIR/ca.pem"
		ud_file "\$w/tls/$certname.pem" 0644 "$TLS_DIR/$certname.pem"
		ud_file "\$w/tls/$certname-key.pem" 0600 "$TLS_DIR/$certname-key.pem"
		ud_file "\$w/secrets/gossip-key" 0600 "$STATE_DIR/secrets/gossip-key"
		ud_file "\$w/secrets/cluster-secret" 0600 "$STATE_DIR/secrets/cluster-secret"
		case $role in
		manager)
			ud_file "\$w/secrets/admin-token" 0600 "$STATE_DIR/secrets/admin-token"
			ud_file "\$root/etc/memcache/tls/ec2-node.pem" 0644 "$TLS_DIR/ec2-node.pem"
			ud_file "\$root/etc/memcache/tls/ec2-node-key.pem" 0600 "$TLS_DIR/ec2-node-key.pem"
			cat <<EOF
put "\$root/etc/systemd/system/memcache-manager.service.d/aws.conf" 0644 <<'$EOF_MARK'
# Written by the memcache user-data (deploy/aws/aws.sh): the key of the EC2
# node certificate, which the ec2 provisioner puts in every node's user-data,
# and the region for the AWS SDK (EC2 API, CloudWatch).
[Service]
LoadCredential=ec2-node-key:/etc/memcache/tls/ec2-node-key.pem
Environment=AWS_REGION=$REGION
$EOF_MARK
EOF
			;;
		frontend)
			ud_file "\$root/etc/memcache/tls/rds-ca.pem" 0644 "$STATE_DIR/rds-ca.pem"
			;;
		esac
		printf 'put "$root/var/lib/cloud/scripts/per-boot/memcache-aws" 0755 <<'\''%s'\''\n' "$EOF_MARK"
		cat <<'EOF'
#!/bin/bash
# Re-applies this instance's current user-data (memcache, deploy/aws/aws.sh).
set -euo pipefail
umask 077
python3 - >/run/memcache-aws-user-data <<'PY'
import gzip, sys, urllib.request
base = "http://169.254.169.254/latest/"
req = urllib.request.Request(base + "api/token", method="PUT",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
token = urllib.request.urlopen(req, timeout=10).read().decode()
req = urllib.request.Request(base + "user-data", headers={"X-aws-ec2-metadata-token": token})
data = urllib.request.urlopen(req, timeout=10).read()
if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
sys.stdout.buffer.write(data)
PY
exec bash /run/memcache-aws-user-data
EOF
		printf '%s\n' "$EOF_MARK"
		printf 'fetch %q "$w/memcache.download"\n' "$BINARY_URL"
		printf 'echo "%s  $w/memcache.download" | sha256sum -c --quiet -\n' "$BINARY_SHA256"
		cat <<EOF
mv -f "\$w/memcache.download" "\$w/memcache"
was=""
if live; then
	was=\$(systemctl is-active memcache-$role.service || true)
fi
env -i PREFIX="\${PREFIX:-/}" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
	MEMCACHE_BIN="\$w/memcache" TLS_DIR="\$w/tls" SECRETS_DIR="\$w/secrets" \\
EOF
		for kv in "TLS_NAME=$certname" "$@"; do
			printf '\t%q \\\n' "$kv"
		done
		cat <<EOF
	"\$w/deploy/provision.sh" $role
# provision.sh restarts the service when its own files change; the files
# above are this script's, so it restarts the service for those.
if [ "\$changed" = 1 ] && [ "\$was" = active ] && live; then
	systemctl daemon-reload
	systemctl restart memcache-$role.service
fi
rm -rf "\$w/tls" "\$w/secrets"
EOF
	} >"$dir/$member.sh"
	gzip -9 -n -c "$dir/$member.sh" >"$dir/$member.gz"
	local size
	size=$(wc -c <"$dir/$member.gz")
	[ "$size" -le 16384 ] || die "$dir/$member.gz: $size bytes, over EC2's 16 KiB user-data limit"
}

# ---- up

iam_role() { # NAME POLICYFILE
	local name=$1 policy=$2 trust doc
	trust=$(render ec2-trust-policy.json)
	doc=$(render "$policy")
	if ! probe iam get-role --role-name "$name" --query Role.Arn --output text >/dev/null; then
		change "" iam create-role --role-name "$name" \
			--assume-role-policy-document "file://$trust" \
			--description "memcache $CLUSTER: $policy" --tags "$(tags "")" --query Role.Arn --output text >/dev/null
	fi
	change "" iam put-role-policy --role-name "$name" --policy-name memcache \
		--policy-document "file://$doc" >/dev/null
	local has
	if has=$(probe iam get-instance-profile --instance-profile-name "$name" \
		--query 'InstanceProfile.Roles[0].RoleName' --output text); then
		:
	else
		change "" iam create-instance-profile --instance-profile-name "$name" \
			--tags "$(tags "")" --query InstanceProfile.Arn --output text >/dev/null
		has=""
	fi
	if [ "$has" != "$name" ]; then
		change "" iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name" >/dev/null
	fi
}

# security_group ROLE: the id of this cluster's group PREFIX-ROLE, created
# if missing.
security_group() {
	local role=$1 id
	id=$(lookup "" ec2 describe-security-groups --filters $(filters "$role") "Name=vpc-id,Values=$VPC" \
		--query 'SecurityGroups[0].GroupId' --output text)
	if [ -z "$id" ]; then
		id=$(change "sg-DRYRUN$role" ec2 create-security-group --group-name "$PREFIX-$role" \
			--description "memcache $CLUSTER $role" --vpc-id "$VPC" \
			--tag-specifications "$(tagspec security-group "$role")" --query GroupId --output text)
	fi
	printf '%s\n' "$id"
}

# allow GROUP PROTO PORT DESCRIPTION SOURCE...: an ingress rule; a SOURCE is
# a security group id (sg-...) or a CIDR.
allow() {
	local group=$1 proto=$2 port=$3 desc=$4 pairs="" ranges="" s
	shift 4
	for s in "$@"; do
		case $s in
		sg-*)
			[ -z "$pairs" ] || pairs+=,
			pairs+='{"GroupId":"'$s'","Description":"'$desc'"}'
			;;
		*)
			[ -z "$ranges" ] || ranges+=,
			ranges+='{"CidrIp":"'$s'","Description":"'$desc'"}'
			;;
		esac
	done
	local perm='{"IpProtocol":"'$proto'","FromPort":'$port',"ToPort":'$port
	[ -z "$pairs" ] || perm+=',"UserIdGroupPairs":['$pairs']'
	[ -z "$ranges" ] || perm+=',"IpRanges":['$ranges']'
	perm+='}'
	change_ok 'InvalidPermission.Duplicate' ec2 authorize-security-group-ingress \
		--group-id "$group" --ip-permissions "[$perm]"
}

security_groups() {
	SG_MANAGERS=$(security_group manager)
	SG_NODES=$(security_group node)
	SG_FRONTENDS=$(security_group frontend)
	SG_DB=$(security_group db)
	local all=("$SG_MANAGERS" "$SG_NODES" "$SG_FRONTENDS")
	# Managers.
	allow "$SG_MANAGERS" tcp $PORT_MANAGER_HTTP "manager UI and API (admin)" "$ADMIN_CIDR"
	allow "$SG_MANAGERS" tcp $PORT_MANAGER_CLUSTER "cluster HTTP, mutual TLS" "${all[@]}"
	allow "$SG_MANAGERS" tcp $PORT_MANAGER_RAFT "Raft, mutual TLS" "$SG_MANAGERS"
	allow "$SG_MANAGERS" tcp $PORT_MANAGER_GOSSIP "gossip" "${all[@]}"
	allow "$SG_MANAGERS" udp $PORT_MANAGER_GOSSIP "gossip" "${all[@]}"
	# Nodes.
	allow "$SG_NODES" tcp $PORT_NODE_HTTP "cache API, mutual TLS" "$SG_MANAGERS" "$SG_FRONTENDS"
	allow "$SG_NODES" tcp $PORT_NODE_GOSSIP "gossip" "${all[@]}"
	allow "$SG_NODES" udp $PORT_NODE_GOSSIP "gossip" "${all[@]}"
	# Frontends.
	allow "$SG_FRONTENDS" tcp $PORT_FRONTEND_HTTP "pages and API (public)" "$PUBLIC_CIDR"
	allow "$SG_FRONTENDS" tcp $PORT_FRONTEND_CLUSTER "delete-all executor, mutual TLS" "$SG_MANAGERS"
	allow "$SG_FRONTENDS" tcp $PORT_FRONTEND_GOSSIP "gossip" "${all[@]}"
	allow "$SG_FRONTENDS" udp $PORT_FRONTEND_GOSSIP "gossip" "${all[@]}"
	# PostgreSQL.
	allow "$SG_DB" tcp $PORT_POSTGRES "PostgreSQL from frontends" "$SG_FRONTENDS"
}

# endpoint: an S3 gateway endpoint on the VPC's main route table, so that
# instances fetch the binary (and the frontend its images) inside the VPC.
endpoint() {
	VPCE=$(lookup "" ec2 describe-vpc-endpoints --filters "Name=vpc-id,Values=$VPC" \
		"Name=service-name,Values=com.amazonaws.$REGION.s3" Name=vpc-endpoint-type,Values=Gateway \
		Name=vpc-endpoint-state,Values=available,pending \
		--query "VpcEndpoints[?contains(RouteTableIds, '$MAIN_RT')].VpcEndpointId | [0]" --output text)
	if [ -z "$VPCE" ]; then
		VPCE=$(change vpce-DRYRUN ec2 create-vpc-endpoint --vpc-id "$VPC" --vpc-endpoint-type Gateway \
			--service-name "com.amazonaws.$REGION.s3" --route-table-ids "$MAIN_RT" \
			--tag-specifications "$(tagspec vpc-endpoint "")" --query VpcEndpoint.VpcEndpointId --output text)
	fi
}

bucket() {
	if ! probe s3api head-bucket --bucket "$BUCKET" >/dev/null; then
		local where=()
		[ "$REGION" = us-east-1 ] || where=(--create-bucket-configuration "LocationConstraint=$REGION")
		change "" s3api create-bucket --bucket "$BUCKET" "${where[@]}" >/dev/null
	fi
	change "" s3api put-bucket-tagging --bucket "$BUCKET" \
		--tagging '{"TagSet":'"$(tags "")"'}' >/dev/null
	change "" s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
		BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true >/dev/null
	change "" s3api put-bucket-ownership-controls --bucket "$BUCKET" \
		--ownership-controls '{"Rules":[{"ObjectOwnership":"BucketOwnerEnforced"}]}' >/dev/null
	change "" s3api put-bucket-encryption --bucket "$BUCKET" --server-side-encryption-configuration \
		'{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"},"BucketKeyEnabled":true}]}' >/dev/null
	# Versioning stays off: a delete-all must really delete the images.
	change "" s3api put-bucket-policy --bucket "$BUCKET" --policy "file://$(render bucket-policy.json)" >/dev/null
	# The binary every instance runs, readable without credentials only
	# through the VPC endpoint (bucket-policy.json), checked by its SHA-256.
	local key=${RELEASE_PREFIX}memcache-$BINARY_SHA256
	change "" s3 cp "$MEMCACHE_BIN" "s3://$BUCKET/$key" --only-show-errors >/dev/null
	BINARY_URL=https://$BUCKET.s3.$REGION.amazonaws.com/$key
}

launch_template() {
	LT_ID=$(lookup "" ec2 describe-launch-templates --filters $(filters node) \
		--query 'LaunchTemplates[0].LaunchTemplateId' --output text)
	[ -z "$LT_ID" ] || return 0
	local data=$STATE_DIR/node-launch-template.json
	cat >"$data" <<EOF
{
  "ImageId": "$AMI",
  "InstanceType": "$NODE_INSTANCE_TYPE",
  "IamInstanceProfile": {"Name": "$ROLE_NODE"},
  "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1},
  "BlockDeviceMappings": [{"DeviceName": "$ROOT_DEVICE", "Ebs": {"Encrypted": true, "VolumeType": "gp3", "VolumeSize": $ROOT_GB, "DeleteOnTermination": true}}],
  "InstanceInitiatedShutdownBehavior": "terminate"
}
EOF
	LT_ID=$(change lt-DRYRUN ec2 create-launch-template --launch-template-name "$LT_NAME" \
		--version-description "memcache $CLUSTER nodes" --launch-template-data "file://$data" \
		--tag-specifications "$(tagspec launch-template node)" \
		--query LaunchTemplate.LaunchTemplateId --output text)
}

database() {
	local status
	DB_CREATED=0
	if status=$(probe rds describe-db-instances --db-instance-identifier "$DB_ID" \
		--query 'DBInstances[0].DBInstanceStatus' --output text); then
		say "database $DB_ID: $status"
		return 0
	fi
	if ! probe rds describe-db-subnet-groups --db-subnet-group-name "$DB_ID" \
		--query 'DBSubnetGroups[0].DBSubnetGroupName' --output text >/dev/null; then
		change "" rds create-db-subnet-group --db-subnet-group-name "$DB_ID" \
			--db-subnet-group-description "memcache $CLUSTER" --subnet-ids "${SUBNET_LIST[@]}" \
			--tags "$(tags db)" >/dev/null
	fi
	# The password goes in through a file, never on the command line.
	local pw=$STATE_DIR/rds-password.json
	printf '{"MasterUserPassword":"%s"}\n' "$(cat "$STATE_DIR/secrets/postgres-password")" >"$pw"
	local version=()
	[ -z "$DB_ENGINE_VERSION" ] || version=(--engine-version "$DB_ENGINE_VERSION")
	change "" rds create-db-instance --db-instance-identifier "$DB_ID" --engine postgres "${version[@]}" \
		--db-instance-class "$DB_INSTANCE_CLASS" --allocated-storage "$DB_STORAGE_GB" --storage-type gp3 \
		--storage-encrypted --no-publicly-accessible --db-subnet-group-name "$DB_ID" \
		--vpc-security-group-ids "$SG_DB" --db-name memcache --master-username memcache \
		--ca-certificate-identifier rds-ca-rsa2048-g1 --backup-retention-period 1 --no-multi-az \
		--no-deletion-protection --copy-tags-to-snapshot --tags "$(tags db)" \
		--cli-input-json "file://$pw" >/dev/null
	DB_CREATED=1
}

# interface MEMBER ROLE SUBNET GROUP: sets ENI, IP, EIP_ALLOC, EIP for MEMBER,
# creating its network interface and Elastic IP if missing.
interface() {
	local member=$1 role=$2 subnet=$3 group=$4 out
	out=$(lookup "" ec2 describe-network-interfaces --filters $(filters "$role" "$member") \
		--query 'NetworkInterfaces[0].[NetworkInterfaceId,PrivateIpAddress]' --output text)
	if [ -z "$out" ]; then
		out=$(change "eni-DRYRUN$member 198.51.100.$((10 + ${#IFACES[@]}))" ec2 create-network-interface \
			--subnet-id "$subnet" --groups "$group" --description "memcache $CLUSTER $member" \
			--tag-specifications "$(tagspec network-interface "$role" "$member")" \
			--query '[NetworkInterface.NetworkInterfaceId,NetworkInterface.PrivateIpAddress]' --output text)
	fi
	read -r ENI IP <<<"$out"
	out=$(lookup "" ec2 describe-addresses --filters $(filters "$role" "$member") \
		--query 'Addresses[0].[AllocationId,PublicIp]' --output text)
	if [ -z "$out" ]; then
		out=$(change "eipalloc-DRYRUN$member 203.0.113.$((10 + ${#IFACES[@]}))" ec2 allocate-address --domain vpc \
			--tag-specifications "$(tagspec elastic-ip "$role" "$member")" \
			--query '[AllocationId,PublicIp]' --output text)
	fi
	read -r EIP_ALLOC EIP <<<"$out"
	IFACES+=("$member")
}

# instance MEMBER ROLE: the id of MEMBER's live instance, if any.
instance() {
	lookup "" ec2 describe-instances --filters $(filters "$2" "$1") \
		Name=instance-state-name,Values=pending,running,stopping,stopped \
		--query 'Reservations[].Instances[].InstanceId' --output text
}

# launch MEMBER ROLE ENI: runs MEMBER's instance with its user-data; prints its id.
launch() {
	local member=$1 role=$2 eni=$3 profile=$PREFIX-$2 attempt out
	local args=(ec2 run-instances --image-id "$AMI" --instance-type "$INSTANCE_TYPE"
		--iam-instance-profile "Name=$profile"
		--network-interfaces "DeviceIndex=0,NetworkInterfaceId=$eni"
		--metadata-options HttpEndpoint=enabled,HttpTokens=required,HttpPutResponseHopLimit=1
		--block-device-mappings '[{"DeviceName":"'"$ROOT_DEVICE"'","Ebs":{"Encrypted":true,"VolumeType":"gp3","VolumeSize":'"$ROOT_GB"',"DeleteOnTermination":true}}]'
		--user-data "fileb://$STATE_DIR/userdata/$member.gz"
		--tag-specifications "$(tagspec instance,volume "$role" "$member")"
		--count 1 --query 'Instances[0].InstanceId' --output text)
	# A new instance profile takes a few seconds to be usable by EC2.
	for attempt in $(seq 1 12); do
		if out=$(change "i-DRYRUN$member" "${args[@]}" 2>"$STATE_DIR/.launch-err"); then
			printf '%s\n' "$out"
			return 0
		fi
		grep -q 'iamInstanceProfile\|Instance Profile' "$STATE_DIR/.launch-err" || break
		say "$member: the instance profile is not usable yet; retrying"
		sleep 5
	done
	cat "$STATE_DIR/.launch-err" >&2
	die "$member: run-instances failed"
}

join_list() {
	local out="" ip
	for ip in "$@"; do
		[ -z "$out" ] || out+=,
		out+="$ip:$PORT_MANAGER_GOSSIP"
	done
	printf '%s' "$out"
}

scheme() {
	if [ "$PUBLIC_TLS" = 1 ]; then echo https; else echo http; fi
}

managers() {
	local i member ips=() enis=() eips=() allocs=()
	IFACES=()
	for i in "${!MANAGERS[@]}"; do
		member=${MANAGERS[$i]}
		interface "$member" manager "${SUBNET_LIST[$((i % ${#SUBNET_LIST[@]}))]}" "$SG_MANAGERS"
		ips+=("$IP") enis+=("$ENI") eips+=("$EIP") allocs+=("$EIP_ALLOC")
	done
	MANAGER_IPS=("${ips[@]}")
	MANAGER_EIPS=("${eips[@]}")
	local join subnets
	join=$(join_list "${ips[@]}")
	subnets=$(IFS=,; echo "${SUBNET_LIST[*]}")
	local ids=() new=()
	for i in "${!MANAGERS[@]}"; do
		member=${MANAGERS[$i]}
		local certname=$member-${enis[$i]}
		cert "$certname" manager "${ips[$i]}" "${eips[$i]}"
		userdata manager "$member" "$certname" \
			"ADDR=${ips[$i]}" "PUBLIC_TLS=$PUBLIC_TLS" \
			"MEMCACHE_NAME=$member" "MEMCACHE_JOIN=$join" "MEMCACHE_BOOTSTRAP_EXPECT=3" \
			"MEMCACHE_ADVERTISE_HTTP=$(scheme)://${eips[$i]}:$PORT_MANAGER_HTTP" \
			"MEMCACHE_INITIAL_NODES=$NODES" "MEMCACHE_METRICS=$METRICS" \
			"MEMCACHE_PROVISIONER=ec2" "MEMCACHE_EC2_CLUSTER=$CLUSTER" "MEMCACHE_EC2_REGION=$REGION" \
			"MEMCACHE_EC2_LAUNCH_TEMPLATE=$LT_ID" "MEMCACHE_EC2_INSTANCE_TYPE=$NODE_INSTANCE_TYPE" \
			"MEMCACHE_EC2_SUBNETS=$subnets" "MEMCACHE_EC2_SECURITY_GROUPS=$SG_NODES" \
			"MEMCACHE_EC2_INSTANCE_PROFILE=$ROLE_NODE" \
			"MEMCACHE_EC2_NODE_TLS_CERT=/etc/memcache/tls/ec2-node.pem" \
			"MEMCACHE_EC2_NODE_TLS_KEY=/run/credentials/memcache-manager.service/ec2-node-key" \
			"MEMCACHE_EC2_BINARY_URL=$BINARY_URL" "MEMCACHE_EC2_BINARY_SHA256=$BINARY_SHA256"
		local id
		id=$(instance "$member" manager)
		if [ -n "$id" ]; then
			say "$member: instance $id exists (its user-data is not changed; see docs/aws.md)"
		else
			id=$(launch "$member" manager "${enis[$i]}")
			say "$member: launched $id"
			new+=("$id")
		fi
		ids+=("$id")
	done
	[ "${#new[@]}" = 0 ] || wait_for ec2 wait instance-running --instance-ids "${new[@]}"
	for i in "${!MANAGERS[@]}"; do
		change "" ec2 associate-address --allocation-id "${allocs[$i]}" \
			--network-interface-id "${enis[$i]}" --allow-reassociation --query AssociationId --output text >/dev/null
	done
}

# rds_ca: STATE_DIR/rds-ca.pem, the CAs the frontend verifies the database
# by (sslmode=verify-full): from RDS's bundle for the region, the
# certificates of the rds-ca-rsa2048-g1 chain the instance is created with
# (the whole bundle if openssl is missing), which keeps the user-data small.
rds_ca() {
	local f=$STATE_DIR/rds-ca.pem bundle=$STATE_DIR/rds-bundle.pem
	if [ -n "$RDS_CA_BUNDLE" ]; then
		cp "$RDS_CA_BUNDLE" "$bundle"
	elif [ ! -s "$bundle" ]; then
		local url=https://truststore.pki.rds.amazonaws.com/$REGION/$REGION-bundle.pem
		if dry; then
			show curl -fsS -o "$bundle" "$url"
			printf '%s\n' "-----BEGIN CERTIFICATE-----" "DRY_RUN placeholder for $url" "-----END CERTIFICATE-----" >"$bundle"
		else
			curl -fsS -o "$bundle.tmp" "$url" && mv "$bundle.tmp" "$bundle"
		fi
	fi
	: >"$f"
	if command -v openssl >/dev/null 2>&1; then
		local pem="" line
		while IFS= read -r line; do
			pem+=$line$'\n'
			if [ "$line" = "-----END CERTIFICATE-----" ]; then
				if openssl x509 -noout -subject <<<"$pem" 2>/dev/null | grep -q 'RSA2048 G1'; then
					printf '%s' "$pem" >>"$f"
				fi
				pem=""
			fi
		done <"$bundle"
	fi
	[ -s "$f" ] || cp "$bundle" "$f"
	chmod 644 "$f"
}

frontend() {
	wait_for rds wait db-instance-available --db-instance-identifier "$DB_ID"
	local host=$DB_ID.DRYRUN.$REGION.rds.amazonaws.com
	if ! dry || [ "$DB_CREATED" = 0 ]; then
		host=$(lookup "$host" rds describe-db-instances --db-instance-identifier "$DB_ID" \
			--query 'DBInstances[0].Endpoint.Address' --output text)
	fi
	rds_ca
	IFACES=(m1 m2 m3)
	interface f1 frontend "${SUBNET_LIST[0]}" "$SG_FRONTENDS"
	local certname=f1-$ENI pw
	cert "$certname" frontend "$IP" "$EIP"
	pw=$(cat "$STATE_DIR/secrets/postgres-password")
	userdata frontend f1 "$certname" \
		"ADDR=$IP" "PUBLIC_TLS=$PUBLIC_TLS" "MEMCACHE_NAME=f1" \
		"MEMCACHE_JOIN=$(join_list "${MANAGER_IPS[@]}")" \
		"MEMCACHE_ADVERTISE_HTTP=$(scheme)://$EIP:$PORT_FRONTEND_HTTP" \
		"MEMCACHE_DB=postgres://memcache:$pw@$host:$PORT_POSTGRES/memcache?sslmode=verify-full&sslrootcert=/etc/memcache/tls/rds-ca.pem" \
		"MEMCACHE_S3_BUCKET=$BUCKET" "MEMCACHE_S3_PREFIX=$S3_PREFIX" "MEMCACHE_S3_REGION=$REGION" \
		"AWS_REGION=$REGION"
	local id
	id=$(instance f1 frontend)
	if [ -n "$id" ]; then
		say "f1: instance $id exists"
	else
		id=$(launch f1 frontend "$ENI")
		say "f1: launched $id"
		wait_for ec2 wait instance-running --instance-ids "$id"
	fi
	change "" ec2 associate-address --allocation-id "$EIP_ALLOC" --network-interface-id "$ENI" \
		--allow-reassociation --query AssociationId --output text >/dev/null
	FRONTEND_EIP=$EIP
}

cmd_up() {
	[ -n "$ADMIN_CIDR" ] || die "ADMIN_CIDR is not set: the addresses that may open the manager UI, e.g. ADMIN_CIDR=203.0.113.7/32"
	local c
	for c in "$ADMIN_CIDR" "$PUBLIC_CIDR"; do
		[[ $c =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] || die "$c: want an IPv4 CIDR such as 203.0.113.7/32"
	done
	[ "$ADMIN_CIDR" != 0.0.0.0/0 ] || say "warning: ADMIN_CIDR=0.0.0.0/0 opens the manager UI to everyone"
	names
	network
	image
	secrets
	say "cluster $CLUSTER in $REGION, account $ACCOUNT, VPC $VPC"
	iam_role "$ROLE_MANAGER" manager-policy.json
	iam_role "$ROLE_NODE" node-policy.json
	iam_role "$ROLE_FRONTEND" frontend-policy.json
	security_groups
	endpoint
	bucket
	launch_template
	database
	managers
	frontend
	local i
	say "up. Admin token: $STATE_DIR/secrets/admin-token; the browsers' CA: $STATE_DIR/tls/ca.pem"
	for i in "${!MANAGERS[@]}"; do
		say "manager ${MANAGERS[$i]}: $(scheme)://${MANAGER_EIPS[$i]}:$PORT_MANAGER_HTTP/ui"
	done
	say "frontend f1: $(scheme)://$FRONTEND_EIP:$PORT_FRONTEND_HTTP"
}

# ---- down

# terminate [ROLE]: terminates this cluster's instances (of ROLE) and waits.
terminate() {
	local ids
	ids=$(lookup "" ec2 describe-instances --filters $(filters "${1:-}") \
		Name=instance-state-name,Values=pending,running,stopping,stopped,shutting-down \
		--query 'Reservations[].Instances[].InstanceId' --output text)
	[ -n "$ids" ] || return 0
	# shellcheck disable=SC2086
	change "" ec2 terminate-instances --instance-ids $ids --query 'TerminatingInstances[].InstanceId' --output text >/dev/null
	# shellcheck disable=SC2086
	wait_for ec2 wait instance-terminated --instance-ids $ids
}

cmd_down() {
	names
	say "deleting everything tagged memcache:cluster=$CLUSTER in $REGION (account $ACCOUNT)"
	# Managers first, so that none launches a node while the rest go.
	terminate manager
	terminate
	# (Each look-up is assigned first: a failing one then stops the run.)
	local a found alloc assoc
	found=$(lookup "" ec2 describe-addresses --filters $(filters) \
		--query 'Addresses[].[AllocationId,AssociationId]' --output text)
	while read -r alloc assoc; do
		[ -n "$alloc" ] || continue
		if [ -n "$assoc" ] && [ "$assoc" != None ]; then
			change "" ec2 disassociate-address --association-id "$assoc" >/dev/null
		fi
		change "" ec2 release-address --allocation-id "$alloc" >/dev/null
	done <<<"$found"
	found=$(lookup "" ec2 describe-network-interfaces --filters $(filters) \
		--query 'NetworkInterfaces[].NetworkInterfaceId' --output text)
	for a in $found; do
		settle 'InUse|in use' ec2 delete-network-interface --network-interface-id "$a"
	done
	if probe rds describe-db-instances --db-instance-identifier "$DB_ID" \
		--query 'DBInstances[0].DBInstanceStatus' --output text >/dev/null; then
		local final=(--skip-final-snapshot)
		[ "$FINAL_SNAPSHOT" != 1 ] || final=(--final-db-snapshot-identifier "$DB_ID-final-$(date -u +%Y%m%d%H%M%S)")
		change_ok 'InvalidDBInstanceState.*already being deleted' rds delete-db-instance \
			--db-instance-identifier "$DB_ID" "${final[@]}" --delete-automated-backups
		wait_for rds wait db-instance-deleted --db-instance-identifier "$DB_ID"
	fi
	if probe rds describe-db-subnet-groups --db-subnet-group-name "$DB_ID" \
		--query 'DBSubnetGroups[0].DBSubnetGroupName' --output text >/dev/null; then
		change "" rds delete-db-subnet-group --db-subnet-group-name "$DB_ID" >/dev/null
	fi
	found=$(lookup "" ec2 describe-launch-templates --filters $(filters) \
		--query 'LaunchTemplates[].LaunchTemplateId' --output text)
	for a in $found; do
		change "" ec2 delete-launch-template --launch-template-id "$a" >/dev/null
	done
	# Groups refer to each other: drop every rule first, then the groups.
	local groups g rules
	groups=$(lookup "" ec2 describe-security-groups --filters $(filters) \
		--query 'SecurityGroups[].GroupId' --output text)
	for g in $groups; do
		rules=$(lookup "" ec2 describe-security-group-rules --filters "Name=group-id,Values=$g" \
			--query 'SecurityGroupRules[?!IsEgress].SecurityGroupRuleId' --output text)
		if [ -n "$rules" ]; then
			# shellcheck disable=SC2086
			change "" ec2 revoke-security-group-ingress --group-id "$g" --security-group-rule-ids $rules >/dev/null
		fi
	done
	for g in $groups; do
		settle DependencyViolation ec2 delete-security-group --group-id "$g"
	done
	if probe s3api head-bucket --bucket "$BUCKET" >/dev/null; then
		change "" s3 rm "s3://$BUCKET" --recursive --only-show-errors >/dev/null
		change "" s3api delete-bucket --bucket "$BUCKET" >/dev/null
	fi
	local vpces
	vpces=$(lookup "" ec2 describe-vpc-endpoints --filters $(filters) \
		--query 'VpcEndpoints[].VpcEndpointId' --output text)
	if [ -n "$vpces" ]; then
		# shellcheck disable=SC2086
		change "" ec2 delete-vpc-endpoints --vpc-endpoint-ids $vpces >/dev/null
	fi
	local role p
	for role in "$ROLE_MANAGER" "$ROLE_NODE" "$ROLE_FRONTEND"; do
		local in
		if in=$(probe iam get-instance-profile --instance-profile-name "$role" \
			--query 'InstanceProfile.Roles[].RoleName' --output text); then
			for p in $in; do
				change "" iam remove-role-from-instance-profile --instance-profile-name "$role" --role-name "$p" >/dev/null
			done
			change "" iam delete-instance-profile --instance-profile-name "$role" >/dev/null
		fi
		if probe iam get-role --role-name "$role" --query Role.Arn --output text >/dev/null; then
			found=$(lookup "" iam list-role-policies --role-name "$role" --query PolicyNames --output text)
			for p in $found; do
				change "" iam delete-role-policy --role-name "$role" --policy-name "$p" >/dev/null
			done
			change "" iam delete-role --role-name "$role" >/dev/null
		fi
	done
	say "down. Left: $STATE_DIR (CA, secrets), CloudWatch metrics (they expire), RDS snapshots you asked for"
}

# settle PATTERN ARGS...: change, retried for up to 5 minutes while it
# fails with an error matching PATTERN (something that goes away by itself:
# an interface of a terminated instance still attached, a group still held).
settle() {
	local pattern=$1 attempt err
	shift
	if dry; then
		show aws "$@" --region "$REGION"
		return 0
	fi
	for attempt in $(seq 1 30); do
		if err=$(awsr "$@" 2>&1 >/dev/null); then
			return 0
		fi
		grep -qE "$pattern" <<<"$err" || {
			printf '%s\n' "$err" >&2
			return 1
		}
		say "waiting: $err"
		sleep 10
	done
	die "still failing after 5 minutes: aws $*"
}

# ---- status

cmd_status() {
	names
	echo "cluster $CLUSTER in $REGION (account $ACCOUNT)"
	awsr ec2 describe-instances --filters $(filters) \
		--query 'Reservations[].Instances[].{member:Tags[?Key==`memcache:member`]|[0].Value,role:Tags[?Key==`memcache:role`]|[0].Value,id:InstanceId,state:State.Name,private:PrivateIpAddress,public:PublicIpAddress}' \
		--output table
	awsr ec2 describe-addresses --filters $(filters) \
		--query 'Addresses[].{member:Tags[?Key==`memcache:member`]|[0].Value,ip:PublicIp,interface:NetworkInterfaceId}' \
		--output table
	awsr rds describe-db-instances --db-instance-identifier "memcache-$CLUSTER" \
		--query 'DBInstances[].{db:DBInstanceIdentifier,status:DBInstanceStatus,endpoint:Endpoint.Address}' \
		--output table 2>/dev/null || echo "database memcache-$CLUSTER: none"
	awsr s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1 && echo "bucket $BUCKET" || echo "bucket $BUCKET: none"
	awsr ec2 describe-security-groups --filters $(filters) \
		--query 'SecurityGroups[].{group:GroupName,id:GroupId}' --output table
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*) usage ;;
esac
