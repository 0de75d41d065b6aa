#!/usr/bin/env bash
# Builds sampalloc (the preload library and the CLI) and profiles demo/leaky.c, a C program
# that leaks in three places: `sampalloc run` prints its leak sites at exit.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -p sampalloc-preload
cargo build --release --features cli --bin sampalloc
mkdir -p target/demo
cc -g -O1 -o target/demo/leaky demo/leaky.c
exec target/release/sampalloc run -- target/demo/leaky "$@"
