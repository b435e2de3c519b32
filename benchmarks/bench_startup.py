"""What a one-off command costs from start to answer, and what a long-lived `serve` costs a query.

    python -m benchmarks.bench_startup --collection demo --runs 5 --baseline 97d5d3f \
        --out benchmarks/results/startup

Each command runs in a fresh process, as a user types it, `--runs` times: wall time and the
process's user CPU time (median and range). "cold": the embedded Milvus server stopped first
(the first command of the day starts it); "warm": the server already running and the files in
the page cache. `--baseline REV` runs the same searches with the package as it was at REV (a
git worktree on `PYTHONPATH`), interleaved with the current code, so the comparison is one run's.
Then `meet-milvus serve` is started once: time until it answers its first query, and the p50 of
`--queries` more queries over HTTP. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

from benchmarks.measure import free_port, load_avg, report
from meet_milvus.config import load_settings
from meet_milvus.web.auth import access_token

REPO = Path(__file__).resolve().parents[1]
QUERY = "three wooden cottages"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, user CPU s) of one command in a fresh process; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if out.returncode:
        raise click.ClickException(f"{' '.join(argv)} failed: {out.stderr.strip()[-400:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before


def summary(samples: list[tuple[float, float]]) -> dict:
    walls, users = [s[0] for s in samples], [s[1] for s in samples]
    return {
        "wall_median": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "user_median": statistics.median(users),
        "runs": len(samples),
    }


def cli(code: Path | None) -> list[str]:
    """The meet-milvus command, from the installed package or from `code` (a worktree)."""
    if code is None:
        return [sys.executable, "-m", "meet_milvus"]
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); "
            "from meet_milvus.cli import main; main()"]  # fmt: skip


def stop_server(env: dict[str, str]) -> None:
    subprocess.run(cli(None) + ["server", "stop"], env=env, capture_output=True, timeout=120)


def post(url: str, body: dict, token: str) -> dict:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def bench_serve(collection: str, queries: list[str], env: dict[str, str], token: str) -> dict:
    """Seconds until a fresh `serve` answers a query, then per-query ms over HTTP."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/search"
    start = time.perf_counter()
    proc = subprocess.Popen(
        cli(None) + ["serve", "--collection", collection, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise click.ClickException("meet-milvus serve exited before answering")
            try:
                post(url, {"text": QUERY, "k": 5}, token)
                break
            except OSError:
                time.sleep(0.05)
        first = time.perf_counter() - start
        walls, served = [], []
        for text in queries:
            t = time.perf_counter()
            answer = post(url, {"text": text, "k": 5}, token)
            walls.append(1e3 * (time.perf_counter() - t))
            served.append(answer["ms"])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "first_answer_s": first,
        "http_ms_p50": statistics.median(walls),
        "http_ms_max": max(walls),
        "search_ms_p50": statistics.median(served),
        "queries": len(walls),
    }


@click.command()
@click.option("--collection", default="demo", show_default=True)
@click.option("--runs", default=5, show_default=True, help="fresh processes per command")
@click.option("--queries", default=50, show_default=True, help="HTTP queries to a warm serve")
@click.option("--baseline", default=None, help="a git revision to compare with, e.g. 97d5d3f")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="OUT.json / OUT.md")
def main(collection: str, runs: int, queries: int, baseline: str | None, out: Path | None) -> None:
    env = dict(os.environ)
    settings = load_settings()
    image = sorted((settings.data_dir / "demo_precomp" / "images" / "test").glob("*.jpg"))[0]
    texts = [QUERY, "a dog", "two happy lions and an orca", "a red car on a road"]
    searches = {
        "text search": ["search", "--collection", collection, QUERY, "-k", "5"],
        "image search": ["search", "--collection", collection, "--image", str(image), "-k", "5"],
    }
    versions: dict[str, Path | None] = {"now": None}
    worktree = None
    if baseline:
        worktree = Path(tempfile.mkdtemp(prefix="meet-baseline-"))
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), baseline],
            check=True, capture_output=True,
        )  # fmt: skip
        versions[baseline] = worktree
    load = [load_avg()]
    rows: dict[str, dict] = {}
    try:
        rows["--help"] = summary([timed(cli(None) + ["--help"], env) for _ in range(runs)])
        for name, args in searches.items():
            for version, code in versions.items():
                cold = []
                for _ in range(max(1, runs // 2)):
                    stop_server(env)
                    cold.append(timed(cli(code) + args, env))
                rows[f"{name} ({version}), cold"] = summary(cold)
            warm: dict[str, list] = {v: [] for v in versions}
            for _ in range(runs):  # interleaved: the machine's noise hits both alike
                for version, code in versions.items():
                    warm[version].append(timed(cli(code) + args, env))
            for version in versions:
                rows[f"{name} ({version}), warm"] = summary(warm[version])
        token, _ = access_token(settings.data_dir)  # the one `serve` will ask for
        serve = bench_serve(collection, texts * (queries // len(texts)), env, token)
    finally:
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                capture_output=True,
            )
            shutil.rmtree(worktree, ignore_errors=True)
    load.append(load_avg())
    result = {
        "command": " ".join(["python -m benchmarks.bench_startup", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "load_avg": load,
        "commands": rows,
        "serve": serve,
    }
    lines = [
        f"`{result['command']}` ({os.cpu_count()} CPUs; load average {load[0][0]:.1f} before, "
        f"{load[1][0]:.1f} after)",
        "",
        "| command | wall s, median (range) | user CPU s, median | runs |",
        "|---|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['wall_median']:.2f} ({r['wall_min']:.2f}–{r['wall_max']:.2f}) "
            f"| {r['user_median']:.2f} | {r['runs']} |"
        )
    lines += [
        "",
        f"`meet-milvus serve`: first answer {serve['first_answer_s']:.1f} s after start; then "
        f"{serve['http_ms_p50']:.1f} ms p50 per query over HTTP (max {serve['http_ms_max']:.1f}; "
        f"search {serve['search_ms_p50']:.1f} ms of it, {serve['queries']} queries)",
    ]
    report(lines, result, out)


if __name__ == "__main__":
    main()
