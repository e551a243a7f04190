"""Side by side rows of two `diffrl evaluate` grids (same prompts, images and noise): before | after.

    python docs/tuning/grid_rows.py BEFORE/grid.png AFTER/grid.png --grid-rows 16 --rows 2 8 15 --out FIG.png
"""
import argparse

from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--grid-rows", type=int, required=True, help="rows in the grids (evaluate draws the first 16 prompts, one row each)")
    parser.add_argument("--rows", type=int, nargs="+", required=True, help="0-based prompt indices to show")
    parser.add_argument("--labels", nargs=2, default=["before", "after"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    before, after = Image.open(args.before).convert("RGB"), Image.open(args.after).convert("RGB")
    if before.size != after.size or before.height % args.grid_rows:
        raise SystemExit("grid_rows.py: the grids differ in size or do not hold --grid-rows rows")
    row_h, gap, header = before.height // args.grid_rows, 16, 16
    figure = Image.new("RGB", (2 * before.width + gap, header + row_h * len(args.rows)), "white")
    draw = ImageDraw.Draw(figure)
    for column, label in enumerate(args.labels):
        draw.text((column * (before.width + gap) + 2, 2), label, fill="black")
    for i, row in enumerate(args.rows):
        box = (0, row * row_h, before.width, (row + 1) * row_h)
        figure.paste(before.crop(box), (0, header + i * row_h))
        figure.paste(after.crop(box), (before.width + gap, header + i * row_h))
    figure.save(args.out)
    print(f"grid_rows.py: {len(args.rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
