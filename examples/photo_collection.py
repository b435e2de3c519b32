"""A gallery of your own photos from Python: index a folder, search it by text, add a picture,
delete one. No captions needed.

    meet-milvus data demo && meet-train       # the demo checkpoint and its training data (once)
    python examples/photo_collection.py ~/Pictures "a dog on a sofa"

The same with the command line: `meet-milvus index ~/Pictures --collection photos`, then
`meet-milvus search "a dog on a sofa" --collection photos`, `meet-milvus delete --collection
photos --missing`.
"""

import sys

from meet_milvus import GalleryWriter, MeetSearcher, NewItem, load_settings
from meet_milvus_loaders.milvus_loader import training_pool
from meet_milvus_loaders.photos import collect


def main(folder: str, query: str) -> None:
    settings = load_settings()
    writer = GalleryWriter("photos", settings.data_dir / "checkpoints" / "demo", settings)
    if writer.gallery is None:  # a new gallery: re-ranking statistics against the demo's pool
        writer.pool = training_pool(settings, writer.model)
    items = collect([folder])
    report = writer.add(items)  # run it again: only new or changed files are encoded
    print("\n".join(report.lines()))

    searcher = MeetSearcher("photos", settings=settings)
    for hit in searcher.search(query, k=5):
        print(f"  {hit.score:.3f}  {hit.external_id}")

    extra = NewItem("extra/" + items[0].external_id, image=items[0].image)  # another id
    print(writer.add([extra]).lines()[-1])
    print(writer.delete([extra.external_id]).lines()[-1])  # and gone again


if __name__ == "__main__":
    main(*sys.argv[1:3])
