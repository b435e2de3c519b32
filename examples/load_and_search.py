"""Load the demo test split into Milvus and search it from Python.

    meet-milvus data demo          # the demo data set (once)
    meet-train                     # a checkpoint in {data_dir}/checkpoints/demo (once)
    python examples/load_and_search.py "an apple on a white background"

Uses the embedded Milvus unless MEET_MILVUS_URI (or --uri) points elsewhere.
"""

import sys

from meet_milvus import MeetSearcher, load_settings
from meet_milvus_loaders.milvus_loader import load


def main(query: str) -> None:
    settings = load_settings()
    report = load(settings, "demo", data="demo", split="test")  # resumable; run it twice
    print("\n".join(report.lines()))

    searcher = MeetSearcher("demo", settings=settings)  # the checkpoint the gallery records
    print(f"\nimages for {query!r}:")
    for hit in searcher.search(query, k=5):
        print(f"  {hit.score:.3f}  {hit.source}")

    image = searcher.search(query, k=1)[0].source  # and back: captions for the best image
    print(f"\ncaptions for {image}:")
    for hit in searcher.search_image(image, k=5, diagnostics=True):
        ranks = ", ".join(f"{s} #{h.rank}" for s, h in hit.stages.items())
        print(f"  {hit.score:.3f}  {hit.source}   ({ranks})")


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "an apple on a white background")
