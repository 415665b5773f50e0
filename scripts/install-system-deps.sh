#!/usr/bin/env bash
# Debian packages the test suite uses: gdal-bin (reference gdalwarp), PostgreSQL 15 + PostGIS (pgstac STAC API),
# chromium + fonts-dejavu-core (report.html rendered headless, tests/test_card_report.py).
# Idempotent: installs only what is missing; needs root (or sudo) when something is missing.
set -euo pipefail
need=()
command -v gdalwarp >/dev/null 2>&1 || need+=(gdal-bin)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/postgis.control ] || need+=(postgresql-15-postgis-3)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "missing Debian packages: ${need[*]} (run as root: apt-get install ${need[*]}); the tests that need them will skip" >&2
    exit 0
  fi
fi
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
