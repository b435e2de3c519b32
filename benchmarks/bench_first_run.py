"""The README's main command on a machine that has none of its data: each step's wall time.

    python -m benchmarks.bench_first_run --install --out benchmarks/results/first-run

Runs `bash examples/demo.sh` twice with a fresh data dir and cache dir under `--work`: the
first run does everything (downloads the Tux Paint stamps package, builds the demo set and its
image features, caches MiniLM's token states, trains, loads both galleries into a new embedded
Milvus, searches and evaluates); the second finds it all cached. The steps' times come from the
"[demo] N s: command" lines demo.sh prints. With `--install`, the README command's install
(`pip install torch==2.13.0 -e ".[train]"`) first runs into a new virtual environment, which
the demo then uses. Writes OUT.json, OUT.md and OUT-demo.txt (what the first run printed: its
training log and evaluation tables).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from benchmarks.measure import free_port, load_avg, report

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^\[demo\] ([0-9.]+) s: (.*)$")


def run(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """Wall seconds and stdout of a command that must succeed; its output is kept in `log`."""
    start = time.perf_counter()
    with log.open("w") as fh:
        out = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=fh, text=True)
    wall = time.perf_counter() - start
    with log.open("a") as fh:
        fh.write(out.stdout)
    if out.returncode:
        raise click.ClickException(f"{' '.join(argv)} failed (exit {out.returncode}); see {log}")
    return wall, out.stdout


@click.command()
@click.option(
    "--work", type=click.Path(path_type=Path), default=Path("/tmp/meet-first-run"),
    show_default=True, help="emptied first: venv, data, cache, logs",
)  # fmt: skip
@click.option("--install", is_flag=True, help="time the install into a new venv first")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="OUT.json / OUT.md")
def main(work: Path, install: bool, out: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "MEET_DATA_DIR": str(work / "data"),
        "MEET_CACHE_DIR": str(work / "cache"),
        "MEET_EMBEDDED_PORT": str(free_port()),
    }
    load = [load_avg()]
    result: dict = {
        "command": " ".join(["python -m benchmarks.bench_first_run", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
    }
    python = sys.executable
    if install:
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        pip = [str(work / "venv" / "bin" / "pip"), "install", "torch==2.13.0", "-e", ".[train]"]
        result["install_s"], _ = run(pip, env, work / "install.log")
        env["PATH"] = f"{work / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(work / "venv")
        python = str(work / "venv" / "bin" / "python")
    runs, printed = [], ""
    try:
        for i in (1, 2):
            wall, stdout = run(["bash", "examples/demo.sh"], env, work / f"demo-{i}.log")
            steps = [(m[2], float(m[1])) for m in map(STEP.match, stdout.splitlines()) if m]
            runs.append({"wall_s": wall, "steps": steps})
            printed = printed or stdout
    finally:
        subprocess.run(
            [python, "-m", "meet_milvus", "server", "stop"], env=env, capture_output=True
        )
    load.append(load_avg())
    result.update(load_avg=load, runs=runs)

    def minutes(s: float) -> str:
        return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:04.1f} s"

    lines = [
        f"`{result['command']}` ({os.cpu_count()} CPUs; load average {load[0][0]:.1f} before, "
        f"{load[1][0]:.1f} after)",
        "",
        "| step | first run | second run (cached) |",
        "|---|---:|---:|",
    ]
    if install:
        lines.append(f"| `pip install torch==2.13.0 -e \".[train]\"` (new venv) | "
                     f"{minutes(result['install_s'])} | |")  # fmt: skip
    second = dict(runs[1]["steps"])
    for name, seconds in runs[0]["steps"]:
        again = minutes(second[name]) if name in second else "(skipped: checkpoint kept)"
        lines.append(f"| `{name}` | {minutes(seconds)} | {again} |")
    lines.append(
        f"| **`bash examples/demo.sh`, whole** | **{minutes(runs[0]['wall_s'])}** "
        f"| **{minutes(runs[1]['wall_s'])}** |"
    )
    report(lines, result, out)
    if out:
        out.with_name(f"{out.name}-demo.txt").write_text(printed)


if __name__ == "__main__":
    main()
