"""`meet-milvus load | search | eval` on the demo gallery, through click and as a process."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from meet_milvus import milvus_eval
from meet_milvus.cli import cli
from meet_milvus_loaders.milvus_loader import encode_split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flags(cli_flags):
    return cli_flags


def _run(flags, *args):
    result = CliRunner().invoke(cli, [*flags, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_load_prints_verified_counts(flags, demo_gallery, demo_checkpoint):
    out = _run(flags, "load", "--collection", demo_gallery, "--data", "demo",
               "--checkpoint", str(demo_checkpoint), "--quiet")  # fmt: skip
    assert f"{demo_gallery}_image_dense: 20 rows (source 20; had 20, inserted 0) ok" in out
    assert f"{demo_gallery}_text_pq: 100 rows (source 100; had 100, inserted 0) ok" in out


def test_search_prints_a_table(flags, demo_gallery):
    out = _run(flags, "search", "an apple on a white background", "--collection", demo_gallery,
               "-k", "3", "--diagnostics")  # fmt: skip
    lines = out.strip().splitlines()
    assert lines[0] == "rank | score | hash rank | pq rank | dense rank | rerank rank | source"
    assert [line.split(" | ")[0].strip() for line in lines[1:4]] == ["1", "2", "3"]
    assert all(line.endswith(".jpg") for line in lines[1:4])


def test_eval_prints_recall_and_stage_tables(flags, demo_gallery):
    out = _run(flags, "eval", "--collection", demo_gallery)
    for method in ("dense exact", "hash only", "PQ only", "cascade", "cascade + re-ranking"):
        assert f"| {method} |" in out
    assert "| method | direction | stage | ms/query | candidates | true match kept % |" in out
    assert "| cascade + re-ranking | t2i | rerank |" in out


def test_eval_measures_which_pq_stage_reproduces_the_model(
    flags, demo_gallery, searcher, split, runtime_settings
):
    out = _run(flags, "eval", "--collection", demo_gallery, "--pq-agreement", "--hash-mode",
               "milvus")  # fmt: skip
    rows = {
        tuple(cells[:2]): float(cells[2])
        for line in out.splitlines()
        if line.startswith("| adc |") or line.startswith("| milvus |")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {(m, d) for m in ("adc", "milvus") for d in ("i2t", "t2i")}
    # The client-side ADC is the model's own scoring: it returns the model's top-10 (float
    # ties aside); Milvus IVF_PQ trains its own codebooks, so it need not.
    assert rows["adc", "i2t"] >= 99 and rows["adc", "t2i"] >= 99
    # The figures are milvus_eval.pq_agreement's, as printed.
    images, texts = encode_split(searcher.model, split, runtime_settings.cache_dir, 128, False)
    found = milvus_eval.pq_agreement(searcher, {"i2t": images, "t2i": texts})
    assert rows == {(r.mode, r.direction): round(r.agreement, 1) for r in found}


def test_user_errors_exit_2_with_one_line(runtime_settings):
    env = dict(os.environ, MEET_MILVUS_URI=runtime_settings.milvus_uri,
               MEET_MILVUS_TOKEN=runtime_settings.milvus_token.get_secret_value(),
               MEET_DATA_DIR=str(runtime_settings.data_dir))  # fmt: skip
    main = [sys.executable, "-c", "from meet_milvus.cli import main; main()"]
    cmd = [*main, "search", "   ", "--collection", "t_demo"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: query 0: the text is empty"]
    cmd = [*main, "search", "x", "--collection", "t_demo", "-k", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "k=0" in out.stderr and "Traceback" not in out.stderr
