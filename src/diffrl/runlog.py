"""Run-directory outputs: metrics as JSON lines, TensorBoard events, image grids, reward curves.

Only the main process creates a RunLogger; other ranks get `None` and log nothing.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, wandb_config: dict | None = None, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            truncate_metrics(self.metrics_path, resume_step)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                        purge_step=None if resume_step is None else resume_step + 1)
        self.wandb = None
        if wandb_config is not None:
            try:
                import wandb
            except ImportError:
                from diffrl.errors import DiffrlError

                raise DiffrlError("run.wandb is on but wandb is not installed (pip install 'diffrl[wandb]')") from None
            self.wandb = wandb.init(project="diffrl", config=wandb_config, dir=str(self.run_dir))

    def log(self, metrics: dict, epoch: int) -> None:
        record = {"epoch": epoch, **{k: _plain(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                if self.writer is not None:
                    self.writer.add_scalar(key, value, epoch)
        if self.wandb is not None:
            self.wandb.log(record, step=epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_metrics(path: Path, epoch: int) -> None:
    """Drop the lines of the metrics file at `path` logged after `epoch` (a resume from the checkpoint taken after it,
    or a copy of a run made at it), so no epoch appears twice."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if _epoch_of(line) <= epoch]
    tmp = path.with_name(path.name + ".tmp")  # replaced atomically
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _epoch_of(line: str) -> float:
    """A metrics line's epoch; a line torn by a kill mid-write (or blank) sorts after every epoch and is dropped."""
    try:
        return json.loads(line).get("epoch", math.inf)
    except (ValueError, AttributeError):
        return math.inf


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    return value


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def held_out_summary(records: list[dict]) -> list[str]:
    """'eval/NAME: first (epoch a) -> last (epoch b)' for every held-out metric evaluated at least twice."""
    lines = []
    for key in dict.fromkeys(k for r in records for k in r if k.startswith("eval/")):
        points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if len(points) >= 2:
            (e0, v0), (e1, v1) = points[0], points[-1]
            lines.append(f"held-out {key[len('eval/'):]}: {v0:.4f} (epoch {e0}) -> {v1:.4f} (epoch {e1})")
    return lines


def wrap_caption(text: str, width: float, measure) -> list[str]:
    """Greedy word wrap of `text` into lines whose `measure(line)` (pixels) is at most `width`.

    Lines break at spaces; a single word wider than `width` is broken inside, character by character.
    """
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if measure(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
            line = ""
        while measure(word) > width and len(word) > 1:
            cut = 1
            while cut < len(word) and measure(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line or not lines:
        lines.append(line)
    return lines


def image_grid(images: np.ndarray, captions: list[str], columns: int = 4, scale: int = 4) -> Image.Image:
    """Tile uint8 images (N, H, W, 3), upscaled `scale`x (nearest), each with its caption below,
    wrapped at word boundaries to the cell width as measured with the drawing font."""
    n, h, w, _ = images.shape
    cell_w, cell_h = w * scale, h * scale
    rows = math.ceil(n / columns)
    measurer = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = measurer.getfont()
    line_h = max(12, sum(font.getmetrics())) if hasattr(font, "getmetrics") else 12
    wrapped = [wrap_caption(c, cell_w - 2, lambda t: measurer.textlength(t, font=font)) for c in captions]
    caption_h = line_h * max([len(lines) for lines in wrapped] + [1])
    grid = Image.new("RGB", (columns * cell_w, rows * (cell_h + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, lines) in enumerate(zip(images, wrapped)):
        x, y = (i % columns) * cell_w, (i // columns) * (cell_h + caption_h)
        grid.paste(Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 1, y + cell_h + line_h * j), line, fill="black", font=font)
    return grid


def plot_curves(records: list[dict], keys: list[str], path: Path, title: str = "") -> None:
    """Line plot of metrics over epochs (missing values skipped), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finish_report(out: Path) -> None:
    """Reward curves (training and held-out) as PNG, and a before/after grid of the held-out images."""
    records = read_metrics(out)
    keys = ["reward_mean"] + sorted({k for rec in records for k in rec if k.startswith("eval/")})
    plot_curves(records, keys, out / "reward_curve.png", title=out.name)
    before, after = out / "images" / "eval_before.png", out / "images" / "eval_after.png"
    if before.exists() and after.exists():
        a, c = Image.open(before), Image.open(after)
        both = Image.new("RGB", (max(a.width, c.width), a.height + c.height + 28), "white")
        draw = ImageDraw.Draw(both)
        draw.text((2, 2), "before (base model)", fill="black")
        both.paste(a, (0, 14))
        draw.text((2, a.height + 16), "after fine-tuning", fill="black")
        both.paste(c, (0, a.height + 28))
        both.save(out / "before_after.png")
