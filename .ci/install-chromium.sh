#!/usr/bin/env bash
# Installs Debian's chromium, which the web package's browser tests drive
# with chromedp (headless). Run as root on Debian 12, or with sudo available;
# does nothing if /usr/bin/chromium is already there.
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt)"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
/usr/bin/chromium --version
