"""Use a Milvus server in Docker (or any Milvus 2.3-2.6) instead of the embedded one.

    docker run -d --name milvus -p 19530:19530 milvusdb/milvus:v2.4.15 milvus run standalone
    # (or Milvus's docker-compose file for standalone)
    python examples/docker_milvus.py http://localhost:19530 "a red car"

The same works from the CLI: `meet-milvus --uri http://localhost:19530 load --collection demo`.
The loader detects the server's version and lays the gallery out for it.
"""

import sys

from meet_milvus import MeetSearcher, load_settings
from meet_milvus.server import connect, server_version
from meet_milvus_loaders.milvus_loader import load


def main(uri: str, query: str) -> None:
    settings = load_settings(milvus_uri=uri)  # token/db: MEET_MILVUS_TOKEN, MEET_MILVUS_DB
    print(f"Milvus {server_version(connect(settings))} at {uri}")
    print("\n".join(load(settings, "demo", data="demo").lines()))
    for hit in MeetSearcher("demo", uri=uri).search(query, k=5):
        print(f"  {hit.score:.3f}  {hit.source}")


if __name__ == "__main__":
    uri = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:19530"
    main(uri, " ".join(sys.argv[2:]) or "a red car")
