# Sourced by the scripts: use the datasets in ../shared/data when they are there.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${ROBUSTOPT_DATA:-}" ] && [ -d "$repo/../shared/data" ]; then
  export ROBUSTOPT_DATA="$repo/../shared/data"
fi
