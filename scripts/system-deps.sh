#!/usr/bin/env bash
# Installs the Debian packages fleetgen's tests use, when they are missing.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The dashboard's browser test (tests/web/test_browser.py): headless Chromium and its WebDriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# systemd-analyze verify/security and systemctl --root (the unit and installer tests).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
for pkg in "$@"; do need+=("$pkg"); done

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package starts a broker on 1883; the tests start their own on free ports.
