"""`meet-milvus load | search | eval run | tune-rerank | tune-pq | pq-agreement` on the demo
gallery, through click and as a process."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from meet_milvus import milvus_eval
from meet_milvus.cli import cli
from meet_milvus.errors import GalleryMismatchError, ParameterError
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


def test_eval_run_prints_recall_and_stage_tables(flags, demo_gallery, tmp_path):
    plot = tmp_path / "eval.png"
    out = _run(flags, "eval", "run", "--collection", demo_gallery, "--plot", str(plot))
    for method in ("dense exact", "hash only", "PQ only", "cascade", "cascade + re-ranking",
                   "cascade + reference re-ranking"):  # fmt: skip
        assert f"| {method} |" in out
    assert "| method | direction | stage | ms/query | candidates | true match kept % |" in out
    assert "| cascade + re-ranking | t2i | rerank |" in out
    assert "| cascade + reference re-ranking | i2t | rerank |" in out
    assert "(ties pessimistic: " in out  # the tie policy is named beside the figures
    with Image.open(plot) as im:  # --plot: the chart of what the table holds
        assert im.format == "PNG"
    one = _run(flags, "eval", "run", "--collection", demo_gallery, "--method",
               "cascade + re-ranking", "--rerank", "reference")  # fmt: skip
    assert "| cascade + reference re-ranking |" in one and "| cascade + re-ranking |" not in one


def test_eval_tune_rerank_prints_the_grid_best_first(flags, demo_gallery, searcher, split,
                                                     runtime_settings):  # fmt: skip
    out = _run(flags, "eval", "tune-rerank", "--collection", demo_gallery)
    assert "warning: tuning on a test split; tune on dev and report test" in out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| alpha")]  # fmt: skip
    assert len(rows) == 10
    rsums = [float(r[3]) for r in rows]
    assert rsums == sorted(rsums, reverse=True) and all(0 <= v <= 600 for v in rsums)
    # The figures are milvus_eval.tune_rerank's, as printed.
    images, texts = encode_split(searcher.model, split, runtime_settings.cache_dir, 128, False)
    best = milvus_eval.tune_rerank(searcher, split, {"i2t": images, "t2i": texts})[0]
    assert rows[0] == [f"{best.alpha:g}", f"{best.beta:g}", str(best.z), f"{best.rsum:.1f}"]


def test_eval_tune_pq_prints_each_keep_per_direction(flags, demo_gallery):
    from meet_milvus.milvus_eval import PQ_KEEPS

    out = _run(flags, "eval", "tune-pq", "--collection", demo_gallery)
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 0.")
            or line.startswith("| 1 |")]  # fmt: skip
    assert [float(r[0].strip("| ")) for r in rows] == list(PQ_KEEPS)
    assert all(0 <= float(v) <= 300 for r in rows for v in (r[1], r[2], r[4], r[5]))
    # The gallery (20 images, 100 captions) is smaller than the lists are deep: all survive.
    assert {(r[3], r[6].strip(" |")) for r in rows} == {("100", "20")}


@pytest.mark.integration
def test_eval_and_meet_train_score_the_same_checkpoint_alike(runtime_settings, searcher, split):
    # meet-train's dev evaluation (similarity matrices) and `meet-milvus eval` (the search's
    # ranked lists, ties broken by id in the Hamming scan) on the same codes: one tie policy,
    # the same figures. The gallery (20 images, 100 captions) fits in the lists whole.
    from meet_milvus import milvus_eval
    from meet_milvus_loaders.milvus_loader import encode_split
    from meet_milvus_training.evaluate import retrieval_recalls

    images, texts = encode_split(searcher.model, split, runtime_settings.cache_dir, 64, False)
    trained = retrieval_recalls(images, texts, searcher.model.codebooks, split.caption_image)
    queries = {"i2t": images, "t2i": texts}
    for method, key in (("hash only", "hash"), ("dense exact", "dense")):
        got = milvus_eval.run_method(searcher, method, split, queries).recall
        assert got.as_row() == pytest.approx(trained[key].as_row()), method


def test_eval_measures_which_pq_stage_reproduces_the_model(
    flags, demo_gallery, searcher, split, runtime_settings
):
    out = _run(flags, "eval", "pq-agreement", "--collection", demo_gallery, "--hash-mode",
               "milvus", "--split", "demo/test")  # fmt: skip
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


def test_eval_refuses_a_split_the_gallery_does_not_hold(flags, demo_gallery):
    for split, error, message in (
        ("demo/dev", GalleryMismatchError, "holds 20 images and 100 captions but demo/dev has"),
        ("demo", ParameterError, "name the split it holds, --split DATA/SPLIT"),
    ):
        result = CliRunner().invoke(cli, [*flags, "eval", "run", "--collection", demo_gallery,
                                          "--split", split])  # fmt: skip
        assert isinstance(result.exception, error) and message in str(result.exception)


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
    cmd = [*main, "search", "x", "--collection", "t_demo", "--no-rerank", "--rerank", "reference"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: search: --no-rerank and --rerank reference contradict each other"
    ]
