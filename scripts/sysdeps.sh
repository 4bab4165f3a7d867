#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks use, only those missing:
#   postgresql  real PostgreSQL for the server tests (the tests start their own cluster)
#   chromium    real browser for the dashboard tests (driven by Playwright)
#   nats-server real NATS for the push tests (devices told "check now")
#   zstd, curl, openssl, xdelta3   baselines measured beside fleetup in benchmarks
#   wrk         the load generator of the check-in benchmark
# Needs root or sudo when something is missing; prints what it does.
set -euo pipefail

packages=(postgresql chromium nats-server zstd curl openssl xdelta3 wrk)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "sysdeps: missing Debian packages: ${missing[*]} (run as root or install sudo)" >&2
  exit 1
fi
echo "sysdeps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
