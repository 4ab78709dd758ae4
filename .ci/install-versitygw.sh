#!/usr/bin/env bash
# Installs versitygw, the S3-compatible server that the blob package's tests
# run against (go test ./blob/ skips it when absent, unless
# MEMCACHE_TEST_REQUIRE_S3=1). Installs nothing if versitygw is already on
# PATH, in $(go env GOBIN) or in $(go env GOPATH)/bin.
set -euo pipefail

VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"

find_versitygw() {
	local dirs=() gopaths=() p
	if command -v versitygw; then
		return 0
	fi
	p="$(go env GOBIN)"
	[[ -z "$p" ]] || dirs+=("$p")
	IFS=: read -ra gopaths <<<"$(go env GOPATH)"
	for p in "${gopaths[@]}"; do
		dirs+=("$p/bin")
	done
	for p in "${dirs[@]}"; do
		if [[ -x "$p/versitygw" ]]; then
			echo "$p/versitygw"
			return 0
		fi
	done
	return 1
}

if ! bin="$(find_versitygw)"; then
	echo "installing github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}" >&2
	go install "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"
	bin="$(find_versitygw)"
fi

echo "versitygw: $bin"
# go install builds without the release's version stamp, so "--version" says
# "git"; the module version is in the build info.
"$bin" --version
go version -m "$bin" | awk '$1 == "mod" { print "module:", $2, $3 }'
