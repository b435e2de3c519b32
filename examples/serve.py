"""Serve a gallery over HTTP from Python, and query it the way a client does.

    meet-milvus data demo && meet-train && meet-milvus load --collection demo   # once
    python examples/serve.py                      # web page + API at http://127.0.0.1:8080
    python examples/serve.py --once "a red apple" # one text and one image query, then exit

`meet-milvus serve --collection demo` does the first without Python. Both ask every request
for the data dir's access token (a browser brings it once, in the printed link). The API from a
shell:

    auth="Authorization: Bearer $(cat ~/.meet-milvus/data/serve.token)"
    curl -s localhost:8080/api/search -H "$auth" -H 'content-type: application/json' \\
        -d '{"text": "a red apple", "k": 3, "switches": {"rerank": false}}'
    curl -s localhost:8080/api/search/image -H "$auth" -F file=@stamp.jpg -F k=3

Uses the embedded Milvus unless MEET_MILVUS_URI (or a TOML file) points elsewhere.
"""

import argparse
import json
import uuid
from pathlib import Path
from urllib.request import Request, urlopen

from meet_milvus import MeetSearcher, load_settings
from meet_milvus.web.app import create_app, warm_up
from meet_milvus.web.auth import access_token
from meet_milvus.web.run import bind, serve, serving, url_of


def post_json(url: str, body: dict, token: str) -> dict:
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    with urlopen(Request(url, json.dumps(body).encode(), headers)) as response:
        return json.load(response)


def post_image(url: str, token: str, path: Path, **fields: str) -> dict:
    """A multipart/form-data upload with the standard library alone."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "content-type": f"multipart/form-data; boundary={boundary}",
        "authorization": f"Bearer {token}",
    }
    with urlopen(Request(url, b"".join(parts), headers)) as response:
        return json.load(response)


def once(app, token: str, query: str) -> None:
    with serving(app) as url:  # a free loopback port, for the duration of the block
        found = post_json(f"{url}/api/search", {"text": query, "k": 5}, token)
        print(f"images for {query!r} ({found['ms']:.0f} ms in the searcher):")
        for hit in found["hits"]:
            print(f"  #{hit['rank']} {hit['score']:.3f}  {hit['source']}")
        best = found["hits"][0]
        picture = Request(url + best["thumbnail"], headers={"authorization": f"Bearer {token}"})
        with urlopen(picture) as response:  # served by id, not by path
            print(f"  {best['thumbnail']}: {len(response.read())} bytes")

        captions = post_image(f"{url}/api/search/image", token, Path(best["source"]), k="3")
        print(f"\ncaptions for {Path(best['source']).name} ({captions['ms']:.0f} ms):")
        for hit in captions["hits"]:
            print(f"  #{hit['rank']} {hit['score']:.3f}  {hit['source']}  (image {hit['image']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", default="demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--once", metavar="QUERY", help="query the API once and exit")
    args = parser.parse_args()

    settings = load_settings()
    searcher = MeetSearcher(args.collection, settings=settings)
    warm_up(searcher)  # the first query loads the gallery's caches: not on a user's time
    token, token_file = access_token(settings.data_dir)  # the one `meet-milvus serve` uses
    app = create_app(searcher, token=token)  # any object with MeetSearcher's interface will do
    if args.once:
        once(app, token, args.once)
        return
    sock = bind(args.host, args.port)
    print(f"serving '{args.collection}' at {url_of(sock)} (Ctrl-C stops; token in {token_file})")
    try:
        serve(app, sock)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
