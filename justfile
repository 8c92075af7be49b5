# Tasks for the opt workspace. `just --list` shows them; each runs the release build of the
# `orthopt` command (the first build compiles every dependency: about 20 minutes on 2 cores).

set shell := ["bash", "-euo", "pipefail", "-c"]
# Arguments reach orthopt as given (quoted values such as --set 'grid.model.width=[4, 8]' stay whole).
set positional-arguments := true

orthopt := "cargo run --release --bin orthopt --"

# List the tasks.
default:
    @just --list

# Install the orthopt command into ~/.cargo/bin (on PATH after rustup's setup).
install:
    cargo install --locked --path pipeline

# Run a recipe: fetch, preprocess, train, evaluate and report (e.g. just run recipes/quickstart.toml --set schedule.lr=0.05).
run recipe *args:
    {{orthopt}} run "$@"

# List a recipe's grid entries, what each re-uses or computes, and its training time on this machine.
plan recipe *args:
    {{orthopt}} plan "$@"

# Print a recipe fully resolved, with each stage's cache key and status.
show recipe *args:
    {{orthopt}} show "$@"

# Gather finished runs into results.csv, summary.csv, results.md and plots (default: outputs/runs).
report *dirs:
    {{orthopt}} report "$@"

# Export a run's trained model as a plain CNN-6 in safetensors (e.g. just export outputs/runs/quickstart --out model.safetensors).
export run *args:
    {{orthopt}} export "$@"

# List the methods, architectures and datasets with their options and defaults.
list:
    {{orthopt}} list

# Show the artifact cache by stage; add --keep recipes/ to see what no recipe uses, and --clean to remove it.
cache *args:
    {{orthopt}} cache "$@"

# Run any orthopt command (e.g. just orthopt --help).
orthopt *args:
    {{orthopt}} "$@"

# Run the fast test tier (every change; a few minutes after the build), in the release profile the commands above share.
test:
    cargo test --workspace --release

# Run the slow test tier: real trainings of every method, kills, interrupts, concurrent processes, the full Fashion-MNIST.
test-slow:
    cargo test --workspace --release -- --ignored

# Run the fault-injection tests: a failure injected into each fused op and into a map route mid-run (a build with the `failpoints` feature).
test-faults:
    cargo test --release -p opt-pipeline --features failpoints --test faults -- --ignored

# Run every tier, as CI does.
test-all: test test-slow test-faults

# Check formatting and lints as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Fuzz every reader of outside data (cargo-fuzz, stable): SECONDS per target, every target unless named.
fuzz seconds="60" *targets:
    scripts/fuzz {{seconds}} {{targets}}

# Check every dependency's advisories (RustSec snapshot of 2026-08-21 in ../shared/advisory-db, offline), licences, bans and sources.
deny *args:
    scripts/deny "$@"

# Measure CNN-6 training throughput per method and each orthogonal map's time at d = 576 and 1024.
bench *args:
    {{orthopt}} bench --methods all --maps 576,1024 --width 64 --input 3x32x32 --batch 128 "$@"

# Measure every architecture's training throughput (CNN-6, CNN-9, ResNet-20/32; baseline, GS, S-OPT) and the maps at the fan-ins they meet, up to d = 2304.
bench-archs *args:
    {{orthopt}} bench --arch cnn6 --methods baseline,gs,sopt "$@"
    {{orthopt}} bench --arch cnn9 --methods baseline,gs,sopt "$@"
    {{orthopt}} bench --arch resnet --depth 20 --methods baseline,gs,sopt "$@"
    {{orthopt}} bench --arch resnet --depth 32 --methods baseline,gs,sopt --maps 144,1152,2304 "$@"

# Compare orthopt with PyTorch eager and torch.compile on this CPU: 5 interleaved rounds, median (min–max) ratios, peak RSS, GFLOP/s, JSON under bench/results/ (installs PyTorch from PyPI into .venv once).
bench-compare *args:
    test -x .venv/bin/python || python3 -m venv .venv
    .venv/bin/python -c 'import torch, numpy' 2>/dev/null || .venv/bin/python -m pip install --quiet torch numpy
    cargo build --release --bin orthopt
    .venv/bin/python bench/compare.py --python .venv/bin/python "$@"

# Measure the same network in PyTorch eager, or with --compile under torch.compile (needs pip install torch).
bench-torch *args:
    python3 bench/torch_cnn6.py --methods all "$@"

# Measure the data path (cache to augmented batch) against the 25 000 images/s CNN-6 needs on an H100.
bench-data *args:
    {{orthopt}} bench-data --images 50000 --input 3x32x32 --batch 128 "$@"

# Build the CUDA orthopt into .cuda/target (installs CUDA 13.0 from PyPI when the machine has no toolkit; about 15 minutes the first time).
build-cuda *args:
    scripts/build-cuda.sh "$@"

# Assemble every CUDA kernel with ptxas for sm_80 and sm_90: registers, spills and shared memory per kernel, checked against its launch bound (no GPU needed).
ptxas-check:
    scripts/ptxas-check.sh

# Check the GPU path (ops and gradients against the CPU, every method's training, the benchmark) with the CUDA build; --cpu checks the plumbing on the CPU.
gpu-check *args:
    scripts/gpu-check.sh "$@"

# Watch the runs in TensorBoard (default outputs/runs; installs TensorBoard from PyPI into .venv-tracking once).
tensorboard dir="outputs/runs" *args:
    "$(scripts/tracking-venv.sh)" -m tensorboard.main --logdir "{{dir}}" "${@:2}"

# Build the book (docs/, mdBook) into target/book/ (installs mdBook from crates.io once).
docs:
    scripts/docs.sh

# Regenerate the book's reference page from the definitions recipes are validated against.
docs-reference:
    {{orthopt}} list --markdown > docs/src/reference.md

# Install Debian's full Fashion-MNIST (used by recipes/fashion_mnist/full.toml and a test).
fetch-fashion-mnist:
    apt-get install -y dataset-fashion-mnist
