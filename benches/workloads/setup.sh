#!/usr/bin/env bash
# Installs what the workload suite (benches/workloads/run.sh) compares sampalloc with, using
# apt-get (Debian, Ubuntu): jemalloc, mimalloc and tcmalloc, and a C compiler for the workloads.
# With --real, also what run.sh --real runs (redis-server, redis-benchmark, gcc); with --jvm, a
# JDK for the jvm-churn row. run.sh installs nothing itself: it leaves a missing allocator out
# and says to run this. Uses sudo unless run as root.
#   benches/workloads/setup.sh [--real] [--jvm]
set -euo pipefail

# The allocators, as run.py looks them up (runners.py, LIBS): libjemalloc.so.2,
# libmimalloc.so.2, libtcmalloc_minimal.so.4.
pkgs=(libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 build-essential python3)
for arg in "$@"; do
  case "$arg" in
    --real) pkgs+=(redis-server redis-tools gcc) ;;
    --jvm) pkgs+=(default-jdk-headless) ;;
    -h | --help)
      sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "setup.sh: unknown option $arg (known: --real, --jvm)" >&2
      exit 2
      ;;
  esac
done

if ! command -v apt-get >/dev/null; then
  echo "setup.sh: no apt-get here; install the equivalents of: ${pkgs[*]}" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
echo "== apt-get install ${pkgs[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
