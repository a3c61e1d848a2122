"""Build the default corpus (Jane Austen's novels) under the cache directory and print its digests.

    QUAMBA_EDGE_CACHE=.cache python calib/build_corpus.py
"""

from quamba_edge.data.austen import NOVELS, ensure_corpus
from quamba_edge.io import sha256_file

if __name__ == "__main__":
    root = ensure_corpus(verbose=True)
    for name in NOVELS:
        path = root / f"{name}.txt"
        print(f"{sha256_file(path)}  {path.stat().st_size:>9,d} B  {path}")
