"""The separate environment DiskANN runs in: diskannpy 0.7.0 pins numpy==1.25, the product needs
numpy 2, so the benchmark drives DiskANN in a worker process from its own venv.

    python -m benchmarks.diskann_env    # creates ~/.meet-milvus/cache/venv-diskann if missing

`ensure()` does the same from the benchmark; MEET_DISKANN_VENV moves the venv elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from meet_milvus.config import DEFAULT_HOME

VENV = Path(os.environ.get("MEET_DISKANN_VENV", DEFAULT_HOME / "cache" / "venv-diskann"))
# diskannpy's own pin (its wheel metadata: numpy ==1.25); nothing else is installed.
DISKANNPY = "0.7.0"
REQUIREMENTS = [f"diskannpy=={DISKANNPY}", "numpy==1.25.*"]


def python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path = VENV) -> bool:
    if not python(venv).is_file():
        return False
    probe = [str(python(venv)), "-c", "import diskannpy, numpy"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def ensure(venv: Path = VENV, echo=print) -> Path:
    """The venv's interpreter, creating the venv (python -m venv + pip install) if missing."""
    if ready(venv):
        return python(venv)
    echo(f"creating {venv} for DiskANN ({', '.join(REQUIREMENTS)})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python(venv)), "-m", "pip", "install", "-q", *REQUIREMENTS]
    subprocess.run(pip, check=True)
    if not ready(venv):
        raise RuntimeError(f"{venv}: diskannpy does not import after installing it")
    return python(venv)


@click.command()
@click.option("--venv", type=click.Path(path_type=Path), default=VENV, show_default=True)
def main(venv: Path) -> None:
    """Create the DiskANN venv if it is missing; print its interpreter."""
    click.echo(ensure(venv, click.echo))


if __name__ == "__main__":
    main()
