"""Image-grid captions wrap at word boundaries (issue 15)."""
import numpy as np
from PIL import Image, ImageDraw

from diffrl.runlog import image_grid, wrap_caption

_DRAW = ImageDraw.Draw(Image.new("RGB", (1, 1)))
_FONT = _DRAW.getfont()


def _measure(text: str) -> float:
    return _DRAW.textlength(text, font=_FONT)


CAPTIONS = [
    "a red circle and a blue square 0.87",
    "a green triangle to the left of a yellow circle 0.12",
    "a photo of a purple hexagon next to two small orange circles 1.00",
    "short",
    "",
]


def _check(text: str, width: float) -> list[str]:
    lines = wrap_caption(text, width, _measure)
    words = text.split()
    # Nothing lost or reordered; breaks only where a word alone cannot fit.
    assert "".join(lines).replace(" ", "") == "".join(words)
    fitting = {w for w in words if _measure(w) <= width}
    pieces = [piece for line in lines for piece in line.split()]
    for piece in pieces:
        if piece not in words:  # a fragment of a broken word: only words wider than the line
            assert any(piece in w and w not in fitting for w in words), (piece, lines)
    for w in fitting:
        assert w in pieces, (w, lines)
    for line in lines:
        assert _measure(line) <= width or len(line) == 1, (line, lines)
    # Greedy: the next line's first word would not have fit on the previous line.
    for a, b in zip(lines, lines[1:]):
        if b.split():
            assert _measure(f"{a} {b.split()[0]}") > width or not a, (a, b)
    return lines


def test_wrap_never_splits_a_fitting_word():
    for width in (20, 40, 64, 90, 128, 256):
        for caption in CAPTIONS:
            _check(caption, width)
    lines = _check("a red circle", max(_measure("a red"), _measure("circle")) + 0.5)
    assert lines == ["a red", "circle"]


def test_wrap_breaks_only_overlong_words():
    lines = _check("an extraordinarilylongword here", _measure("extra") + 0.5)
    assert all(_measure(line) <= _measure("extra") + 0.5 for line in lines)
    assert lines[0] == "an" and lines[-1] == "here"


def test_image_grid_caption_lines_fit_cells():
    images = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    grid = image_grid(images, CAPTIONS, columns=3, scale=4)
    assert grid.width == 3 * 64
    assert grid.height > 2 * 64
