"""`meet-milvus eval run --plot`: the chart is a real PNG with one bar per method and figure."""

from __future__ import annotations

import pytest
from PIL import Image

from meet_milvus.charts import COLOURS, check_plot_path, write_recall_chart
from meet_milvus.errors import MeetError
from meet_milvus.evaluation import Recall


def _recall(scale: float) -> Recall:
    r = [scale * v for v in (10, 30, 40, 12, 35, 50)]
    return Recall(r1_i2t=r[0], r5_i2t=r[1], r10_i2t=r[2], r1_t2i=r[3], r5_t2i=r[4],
                  r10_t2i=r[5], rsum=sum(r), medr_i2t=5, meanr_i2t=9, medr_t2i=4,
                  meanr_t2i=8)  # fmt: skip


@pytest.mark.unit
def test_chart_draws_every_method(tmp_path):
    recalls = {"dense exact": _recall(1.0), "hash only": _recall(0.5), "cascade": _recall(0.9)}
    ms = {"dense exact": 2.0, "hash only": 0.1, "cascade": 0.8}
    path = write_recall_chart(tmp_path / "r.png", recalls, ms, title="demo/test", note="ties")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert all(COLOURS[m] in colours for m in range(len(recalls)))  # each method's bars
    assert path.stat().st_size < 100_000  # small enough to commit beside a README table


@pytest.mark.unit
def test_bad_plot_paths_are_refused(tmp_path):
    with pytest.raises(MeetError, match=r"--plot .*r\.svg: give a \.png path"):
        check_plot_path(tmp_path / "r.svg")
    with pytest.raises(MeetError, match="folder .* not found"):
        check_plot_path(tmp_path / "nowhere" / "r.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(MeetError, match=r"--plot .*d\.png: is a folder"):
        check_plot_path(tmp_path / "d.png")
    with pytest.raises(MeetError, match="no methods to draw"):
        write_recall_chart(tmp_path / "r.png", {}, {}, title="x")
