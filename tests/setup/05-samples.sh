# shellcheck shell=bash
# Sourced by tests/run-all.sh: points the config-compiler tests at the real Phoenix
# Hypervisor config files, which are read in place and never copied into this repo.
# PHOENIX_SAMPLES is the base directory of a real host (/usr/local/phoenix_hypervisor:
# etc/ beside stacks/ and persistent-storage/). It may be set by the caller; else
# ../shared/phoenix/main next to the repo.

phoenix_samples_dir="${PHOENIX_SAMPLES:-$(cd "$(pwd)/.." && pwd)/shared/phoenix/main}"
if [ -f "$phoenix_samples_dir/etc/phoenix_lxc_configs.json" ]; then
  export PHOENIX_SAMPLES="$phoenix_samples_dir"
  echo "Phoenix sample configs: $PHOENIX_SAMPLES"
else
  echo "FATAL: Phoenix sample configs not found at $phoenix_samples_dir (set PHOENIX_SAMPLES)" >&2
  return 1
fi
