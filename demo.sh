#!/usr/bin/env bash
# Builds sampalloc (the preload library and the CLI) and profiles demo/leaky.c, a C program
# that leaks in three places: `sampalloc run` prints its leak sites at exit.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -p sampalloc-preload
cargo build --release --features cli --bin sampalloc
mkdir -p target/demo
cc -g -O1 -o target/demo/leaky demo/leaky.c
# A sample every 64 KiB on average (the default is 512 KiB): this short demo leaks only ~13 MiB,
# and more samples make the estimates close to what it really leaked.
exec target/release/sampalloc run --conf lg_prof_sample:16 -- target/demo/leaky "$@"
