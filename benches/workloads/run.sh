#!/usr/bin/env bash
# The multi-threaded workload suite: builds libsampalloc.so and the C workloads of this directory,
# runs every workload under glibc, jemalloc, mimalloc, tcmalloc and sampalloc (prof off and on),
# interleaved, and writes benches/results/workloads.csv, workloads-summary.{csv,md} and the SVG
# plots. The work is done by run.py (Python 3 standard library; runners.py and report.py beside
# it); see its header for details. It installs nothing: benches/workloads/setup.sh installs the
# other allocators (and, with --real and --jvm, what those rows run) with apt-get.
#   benches/workloads/run.sh [--reps N] [--only larson,frag] [--real] [--allocators glibc,sampalloc]
set -euo pipefail
exec python3 "$(dirname "$0")/run.py" "$@"
