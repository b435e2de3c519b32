"""Contact sheets: drawn from hits (fast, no Milvus), and `meet-milvus search --sheet` for real."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from meet_milvus.cli import cli
from meet_milvus.errors import MeetError
from meet_milvus.results import Hit
from meet_milvus.sheet import THUMB, check_path, write_sheet

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220)]


def _image_hits(tmp_path, n=3):
    hits = []
    for i in range(n):
        path = tmp_path / f"stamp{i}.png"
        Image.new("RGB", (300, 150), COLOURS[i % 3]).save(path)
        hits.append(Hit(id=i, score=0.9 - i / 10, source=str(path), external_id=path.name,
                        modality="image", image=i))  # fmt: skip
    return hits


def _colour_count(image, colour, tolerance=12):
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.asarray(colour)) <= tolerance).all(axis=-1).sum())


@pytest.mark.unit
def test_text_query_sheet_shows_every_thumbnail(tmp_path):
    out = write_sheet(tmp_path / "sheet.png", _image_hits(tmp_path), text="a red square")
    sheet = Image.open(out)
    assert sheet.format == "PNG"
    assert sheet.width >= 3 * THUMB
    # Each 300x150 image is scaled into the 180 box: 180x90 pixels of its colour.
    for colour in COLOURS:
        assert _colour_count(sheet, colour) >= 0.95 * THUMB * THUMB // 2


@pytest.mark.unit
def test_missing_sources_become_placeholders_and_jpeg_works(tmp_path):
    hits = _image_hits(tmp_path, 2)
    (tmp_path / "stamp1.png").unlink()
    out = write_sheet(tmp_path / "sheet.jpg", hits, text="x" * 500)  # long query: wrapped
    sheet = Image.open(out)
    assert sheet.format == "JPEG"
    assert _colour_count(sheet, COLOURS[0], 30) > 10_000
    assert _colour_count(sheet, COLOURS[1], 30) == 0


@pytest.mark.unit
def test_image_query_sheet_shows_the_query_beside_captions(tmp_path):
    query = tmp_path / "query.png"
    Image.new("RGBA", (100, 100), (250, 200, 0, 255)).save(query)
    captions = [
        Hit(id=7 + i, score=0.5 - i / 10, source=f"a yellow square number {i} " * 4,
            external_id=f"demo/test/caption/{7 + i}", modality="text", image=1)
        for i in range(4)
    ]  # fmt: skip
    short = write_sheet(tmp_path / "one.png", captions[:1], image=query)
    long = write_sheet(tmp_path / "four.png", captions, image=query)
    assert _colour_count(Image.open(long), (250, 200, 0)) >= 270 * 270
    # Captions are laid out as text: more captions, a taller sheet (at least the image's).
    assert Image.open(long).height >= Image.open(short).height >= 280


@pytest.mark.unit
def test_bad_sheet_paths_are_one_line(tmp_path):
    kinds = "give a .png, .jpg, .jpeg or .webp path"
    with pytest.raises(MeetError, match=rf"--sheet .*out\.txt: {kinds}"):
        check_path(tmp_path / "out.txt")
    (tmp_path / "a-folder.png").mkdir()
    with pytest.raises(MeetError, match=r"--sheet .*a-folder\.png: is a folder"):
        check_path(tmp_path / "a-folder.png")
    with pytest.raises(MeetError, match="folder .*nope not found"):
        check_path(tmp_path / "nope" / "out.png")
    with pytest.raises(MeetError, match="one of them"):
        write_sheet(tmp_path / "s.png", [], text="a", image=tmp_path / "q.png")


# -- through the CLI, on the real demo gallery ------------------------------------------------


@pytest.fixture(scope="module")
def flags(cli_flags):
    return cli_flags


@pytest.mark.integration
def test_search_writes_a_contact_sheet(flags, demo_gallery, tmp_path):
    out = tmp_path / "results.png"
    result = CliRunner().invoke(
        cli, [*flags, "search", "an apple", "--collection", demo_gallery, "-k", "4",
              "--sheet", str(out)], catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"(contact sheet: {out})" in result.output
    sheet = Image.open(out)
    assert sheet.size[0] >= 4 * THUMB and sheet.size[1] > THUMB
    # Thumbnails are stamps on white: the sheet is not blank.
    assert len(np.unique(np.asarray(sheet.convert("RGB")).reshape(-1, 3), axis=0)) > 50


@pytest.mark.integration
def test_image_search_names_each_captions_image(flags, demo_gallery, runtime_settings, tmp_path):
    from meet_milvus_loaders.precomp import load_split

    split = load_split(runtime_settings.data_dir, "demo", "test")
    out = tmp_path / "captions.png"
    result = CliRunner().invoke(
        cli, [*flags, "search", "--image", split.image_paths[0], "--collection", demo_gallery,
              "-k", "3", "--sheet", str(out)], catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "rank | score | image | external id | caption"
    for line in lines[1:4]:
        rank, _, image, external, caption = line.split(" | ")
        number = int(external.rsplit("/", 1)[1])
        assert external.startswith("demo/test/caption/") and caption == split.captions[number]
        assert int(image) == split.caption_image[number]
    assert Image.open(out).height >= 280


@pytest.mark.unit
def test_a_bad_sheet_path_fails_before_searching(tmp_path):
    # Nobody listens at port 9: reaching Milvus would fail with another message.
    result = CliRunner().invoke(
        cli, ["--uri", "http://127.0.0.1:9", "search", "x", "--collection", "t_nothing",
              "--sheet", str(tmp_path / "s.gif")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "give a .png, .jpg, .jpeg or .webp path" in str(result.exception)
