#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/integration/test_browser.py) if missing.
# Playwright drives it directly; Playwright's own browser downloads are not used.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
echo "installing chromium (Debian package) for the browser test"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium >/dev/null 2>&1 || {
  apt-get update -qq
  apt-get install -y -qq chromium
}
