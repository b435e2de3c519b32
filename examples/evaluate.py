"""Evaluate a loaded gallery through Milvus from Python (what `meet-milvus eval run` prints).

python examples/load_and_search.py            # loads gallery "demo" (demo/test)
python examples/evaluate.py demo
"""

import sys

from meet_milvus import MeetSearcher, load_settings
from meet_milvus.evaluation import format_table
from meet_milvus.milvus_eval import METHODS, format_stages, run_method
from meet_milvus_loaders.milvus_loader import encode_split
from meet_milvus_loaders.precomp import load_split


def main(collection: str) -> None:
    settings = load_settings()
    searcher = MeetSearcher(collection, settings=settings)
    data, split_name = searcher.gallery.meta["image"].source.rsplit("/", 1)
    split = load_split(settings.data_dir, data, split_name)
    images, texts = encode_split(searcher.model, split, settings.cache_dir, 128, True)
    queries = {"i2t": images, "t2i": texts}  # every image and caption of the split
    results = [run_method(searcher, name, split, queries) for name in METHODS]
    print(format_table({r.name: r.recall for r in results}))
    print()
    print(format_stages(results))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo")
