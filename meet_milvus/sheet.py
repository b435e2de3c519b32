"""Contact sheets of search results: one picture a person can look at (`search --sheet`).

Images for a text: the query on top, then a grid of thumbnails, each labelled with its rank,
score and name. Captions for an image: the query image on the left, its captions with rank,
score and the id of the image each caption describes on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from meet_milvus.errors import ParameterError
from meet_milvus.inputs import check_output_path
from meet_milvus.model.features import to_rgb
from meet_milvus.results import Hit

SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
THUMB = 180  # thumbnail box, pixels
QUERY_SIZE = 280  # the query image's box on an image-query sheet
COLUMNS = 5
PAD = 12
WIDTH = 980  # of an image-query sheet
BACKGROUND = (255, 255, 255)
INK = (29, 35, 48)
MUTED = (102, 112, 133)
ACCENT = (36, 88, 211)
EMPTY = (238, 240, 244)


def check_path(path: str | Path) -> Path:
    """The sheet's path, refused with one line before any search is run."""
    return check_output_path(path, "--sheet", tuple(SUFFIXES))


def write_sheet(
    path: str | Path,
    hits: Sequence[Hit],
    *,
    text: str | None = None,
    image: str | Path | None = None,
) -> Path:
    """Draws the hits of a `text` query (image hits) or an `image` query (caption hits) and
    saves the sheet to `path` (format from the suffix)."""
    path = check_path(path)
    if (text is None) == (image is None):
        raise ParameterError("contact sheet: give the query text or the query image (one of them)")
    sheet = images_sheet(text, hits) if text is not None else captions_sheet(Path(image), hits)
    try:
        sheet.save(path, SUFFIXES[path.suffix.lower()])
    except OSError as e:
        raise ParameterError(f"--sheet {path}: cannot write ({e.strerror or e})") from None
    return path


def images_sheet(query: str, hits: Sequence[Hit]) -> Image.Image:
    """A grid of the image hits of a text query under the query."""
    font, small, title = _font(14), _font(12), _font(18)
    columns = max(1, min(COLUMNS, len(hits)))
    width = max(columns * (THUMB + PAD) + PAD, 520)
    heading = _wrap(f"images for “{query}”", title, width - 2 * PAD)[:3]
    top = PAD + len(heading) * _line(title) + PAD
    label = _line(font) + _line(small) + 6
    rows = max(1, -(-len(hits) // columns))
    sheet = Image.new("RGB", (width, top + rows * (THUMB + label + PAD) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _lines(draw, (PAD, PAD), heading, title, INK)
    if not hits:
        draw.text((PAD, top), "no results", font=font, fill=MUTED)
    for i, hit in enumerate(hits):
        x = PAD + (i % columns) * (THUMB + PAD)
        y = top + (i // columns) * (THUMB + label + PAD)
        _paste_fit(sheet, draw, hit.source, (x, y), THUMB, small)
        y += THUMB + 4
        rank = f"#{i + 1}"
        draw.text((x, y), rank, font=font, fill=INK)
        draw.text((x + font.getlength(rank) + 10, y), f"{hit.score:.4f}", font=font, fill=ACCENT)
        name = _clip(Path(hit.source).name or hit.external_id, small, THUMB)
        draw.text((x, y + _line(font)), name, font=small, fill=MUTED)
    return sheet


def captions_sheet(query: Path, hits: Sequence[Hit]) -> Image.Image:
    """The query image beside the caption hits, as text with rank, score and image id."""
    font, small, title = _font(15), _font(12), _font(18)
    text_x = PAD + QUERY_SIZE + 2 * PAD
    text_width = WIDTH - text_x - PAD
    blocks = []
    for rank, hit in enumerate(hits, 1):
        wrapped = _wrap(hit.source, font, text_width - 120)
        meta = _clip(f"image {hit.image} · {hit.external_id}", small, text_width)
        blocks.append((rank, hit, wrapped, meta))
    heights = [len(w) * _line(font) + _line(small) + PAD for _, _, w, _ in blocks]
    top = PAD + _line(title) + PAD
    left = top + QUERY_SIZE + 4 + _line(small)
    sheet = Image.new("RGB", (WIDTH, max(left, top + sum(heights)) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), "captions for the image", font=title, fill=INK)
    _paste_fit(sheet, draw, str(query), (PAD, top), QUERY_SIZE, small)
    name = _clip(query.name, small, QUERY_SIZE)
    draw.text((PAD, top + QUERY_SIZE + 4), name, font=small, fill=MUTED)
    if not hits:
        draw.text((text_x, top), "no results", font=font, fill=MUTED)
    y = top
    for (rank, hit, wrapped, meta), height in zip(blocks, heights, strict=True):
        draw.text((text_x, y), f"#{rank}", font=font, fill=INK)
        draw.text((text_x + 40, y), f"{hit.score:.4f}", font=font, fill=ACCENT)
        _lines(draw, (text_x + 120, y), wrapped, font, INK)
        draw.text((text_x + 120, y + len(wrapped) * _line(font)), meta, font=small, fill=MUTED)
        y += height
    return sheet


# -- drawing helpers --------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in font: no system fonts needed (a bitmap one where FreeType is missing).
    return ImageFont.load_default(size)


def _line(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    box = font.getbbox("Hgy")
    return int(box[3] - box[1]) + 6


def _lines(draw: ImageDraw.ImageDraw, at: tuple[int, int], lines: list[str], font, fill) -> None:
    x, y = at
    for line in lines:
        draw.text((x, y), line, font=font, fill=fill)
        y += _line(font)


def _wrap(text: str, font, width: int) -> list[str]:
    """Words into lines no wider than `width` pixels (a long word is cut)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = _clip(word, font, width)
    if current or not lines:
        lines.append(current)
    return lines


def _clip(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _paste_fit(sheet: Image.Image, draw: ImageDraw.ImageDraw, source: str,
               at: tuple[int, int], box: int, font) -> None:  # fmt: skip
    """The image at `source` scaled into a box x box square, centred; a grey square saying why
    when it cannot be read (a gallery whose sources are names, or a moved file)."""
    x, y = at
    # A hairline frame: stamps on white would otherwise run into the white sheet.
    draw.rectangle((x - 1, y - 1, x + box, y + box), outline=EMPTY)
    image = _load(source)
    if image is None:
        draw.rectangle((x, y, x + box - 1, y + box - 1), fill=EMPTY)
        draw.text((x + 8, y + box // 2 - 8), "no image file", font=font, fill=MUTED)
        return
    # Fit the box both ways: small images are enlarged too, so every cell reads the same.
    scale = box / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    sheet.paste(image, (x + (box - image.width) // 2, y + (box - image.height) // 2))


def _load(source: str) -> Image.Image | None:
    """RGB (transparency on white, as the model sees it), or None when not a readable image."""
    try:
        with Image.open(Path(source)) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return to_rgb(im)
