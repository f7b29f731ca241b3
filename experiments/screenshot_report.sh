#!/usr/bin/env bash
# Render a report with headless Chromium and save a screenshot (a visual check that the
# self-contained HTML renders offline). Needs Debian's chromium: apt-get install chromium.
#
#   bash experiments/screenshot_report.sh RUN/report.html [OUT.png] [WIDTHxHEIGHT]
set -euo pipefail
html=$(realpath "$1")
out=${2:-/tmp/report.png}
size=${3:-1200,2000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium is not installed: apt-get install -y chromium" >&2
  exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
  --screenshot="$out" --window-size="${size/x/,}" "file://$html" 2>/dev/null
echo "screenshot written to $out"
