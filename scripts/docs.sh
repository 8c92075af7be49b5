#!/usr/bin/env bash
# `just docs`: builds the book (docs/, mdBook) into target/book/. Installs mdBook from crates.io
# into ~/.cargo/bin first when it is not there (once; about 3-5 minutes on 2 cores, HTML and
# search only: without the `serve`/`watch` features). The link check and the generated
# reference page are tests of the fast tier (pipeline/tests/docs.rs), run by `just test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
version=0.5.4
if ! mdbook --version 2>/dev/null | grep -q "v$version"; then
    cargo install --locked mdbook --version "$version" --no-default-features --features search
fi
mdbook build docs
echo "the book: target/book/index.html"
