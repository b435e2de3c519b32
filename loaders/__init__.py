"""Data sets in: the paper's precomputed features, raw images with captions, the demo set."""

from meet_milvus_loaders.precomp import (
    Split,
    available_splits,
    load_split,
    write_folds,
    write_split,
)

__all__ = ["Split", "available_splits", "load_split", "write_folds", "write_split"]
