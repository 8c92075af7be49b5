"""Cut the embedded Fashion-MNIST subset out of Debian's `dataset-fashion-mnist` package.

Usage: python3 make_subset.py [SRC_DIR] — writes the four gzipped IDX files next to this script.
Takes the first N_TRAIN training and the first N_TEST test records, unchanged (same IDX
headers, only the record count differs), so readers see the official format.
"""
import gzip, os, struct, sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
N_TRAIN, N_TEST = 6000, 1000
HERE = os.path.dirname(os.path.abspath(__file__))

def cut(name, n):
    with gzip.open(os.path.join(SRC, name + ".gz"), "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * (ndim - 1), data[8:4 + 4 * ndim]) if ndim > 1 else ()
    record = 1
    for d in dims:
        record *= d
    head = struct.pack(">II", magic, n) + data[8:4 + 4 * ndim]
    body = data[4 + 4 * ndim: 4 + 4 * ndim + n * record]
    # mtime=0 keeps the archive bytes reproducible.
    with open(os.path.join(HERE, name + ".gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(head + body)

cut("train-images-idx3-ubyte", N_TRAIN)
cut("train-labels-idx1-ubyte", N_TRAIN)
cut("t10k-images-idx3-ubyte", N_TEST)
cut("t10k-labels-idx1-ubyte", N_TEST)
