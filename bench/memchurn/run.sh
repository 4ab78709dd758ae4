#!/bin/sh
# Memory under eviction churn (issue 12): RSS per cached byte of a real
# `memcache node` process, before (--memory-limit=false, the runtime's
# defaults) and after (the node sets its memory limit from its capacity).
# Usage, from anywhere in the repository:
#
#	bench/memchurn/run.sh [capacity-mb [fill [put-rate [duration]]]]
#
# Defaults: 128 MB filled by 1,400 uploads of 100 KB, then 100 uploads/s
# of new keys (each evicts) and 2 readers of recent keys for 90 s, sampled
# every second. Prints one table per run and a summary line.
set -eu
cd "$(dirname "$0")/../.."
capacity=${1:-128}
fill=${2:-1400}
rate=${3:-100}
duration=${4:-90s}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/memcache" .
go build -o "$out/memchurn" ./bench/memchurn
for mode in before after; do
	flags=""
	[ "$mode" = before ] && flags="--memory-limit=false"
	echo "## $mode"
	"$out/memchurn" -bin "$out/memcache" -capacity-mb "$capacity" -fill "$fill" \
		-put-rate "$rate" -duration "$duration" -node-flags "$flags"
	echo
done
