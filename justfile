# Tasks for the opt workspace. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the tasks.
default:
    @just --list

# Run a recipe (extra arguments go to `opt run`, e.g. `--set schedule.lr=0.05`).
run recipe *args:
    cargo run --release --quiet --bin opt -- run {{recipe}} {{args}}

# Print the resolved recipe and each stage's cache key.
show recipe *args:
    cargo run --release --quiet --bin opt -- show {{recipe}} {{args}}

# The whole test suite (CPU only).
test:
    cargo test --workspace --release

# Lints as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Training throughput of CNN-6 (width 64, 3x32x32, batch 128) per method, and each orthogonal
# map's time at d = 576 and 1024, on this machine.
bench *args:
    cargo run --release --quiet --bin opt -- bench --methods all --maps 576,1024 --width 64 --input 3x32x32 --batch 128 {{args}}

# The same network in PyTorch eager (needs `pip install torch`), for comparison.
bench-torch *args:
    python3 bench/torch_cnn6.py --methods all {{args}}

# Optional: the full Fashion-MNIST from Debian (used by recipes/fashion_mnist_full.toml and a test).
fetch-fashion-mnist:
    apt-get install -y dataset-fashion-mnist

# Data-path throughput: decoded CIFAR-shaped data from the cache, pad + crop + flip, batch
# assembly (images/s and ms per batch of 128), against the ~25 000 images/s CNN-6 needs on an H100.
bench-data *args:
    cargo run --release --quiet --bin opt -- bench-data --images 50000 --input 3x32x32 --batch 128 {{args}}
