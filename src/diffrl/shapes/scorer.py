"""The exact ShapesWorld reward: read the image and the prompt metadata, no learned model.

Pipeline (all numpy, 32x32 images):

1. Segment. Every object pixel is a blend ``BACKGROUND + alpha * (COLORS[c] - BACKGROUND)``
   (anti-aliasing and blur mix an object only with the background, since objects are >= 2 px
   apart). So per pixel and color we fit alpha on the background->color line and keep the
   color whose line passes nearest to the pixel. A pixel is that color's foreground when
   ``alpha >= 0.5`` (nearer the color than the background: the 50% iso-contour, which keeps
   areas and boxes unbiased) and its distance to the line is at most ``MAX_LINE_DIST``.
   Plain nearest-palette assignment would not do: a half-red edge pixel is nearest to orange.
2. Label 8-connected components of equal color; drop components under ``MIN_AREA`` px at
   32x32 (color noise, stray edge pixels). Every surviving component counts as one object.
3. Classify each component's shape from moments of its soft (alpha-weighted, so sub-pixel)
   coverage: vertical skewness separates the triangle (mass at its base) from the symmetric
   circle and square; the corner moment E[dx^2 dy^2] / (E[dx^2] E[dy^2]) -- 1 for a square,
   2/3 for a disk -- separates those two. See `shape_features` and `classify_shape`.
4. Check the prompt's constraints; dense score = fraction met, success = all met.

Constraints per category ("a component of color c" means a surviving component of c;
"K objects" is the number of surviving components of any color):

- single (3): its color present; a component of that color has its shape; exactly 1 object.
- color_binding (5): per object, its color present and a component of that color has its
  shape (so "a red circle and a blue square" drawn as a red square and a blue circle scores
  3/5); exactly 2 objects (drawing every color-shape pair does not pass).
- counting (4): its color present; a component of that color has its shape; exactly
  ``count`` components of that color and shape; exactly ``count`` objects.
- spatial (6): per object, its color present and a component of that color has its shape;
  the relation holds; exactly 2 objects. The relation compares the two objects' components
  (the one with the right shape if any, else the largest of the color): the subject's pixel
  extent lies on the stated side of the other's along the relation axis ("above": subject
  bottom < other top + ``RELATION_TOLERANCE``; y grows down), as the renderer guarantees.
  The other axis is free, as in the renderer.

Render rules relied on (see `diffrl.shapes.world`): background and fills are exact palette
colors; objects never overlap (>= 2 px apart) and are axis-aligned in square boxes of side
>= 8 px; triangles point up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffrl.shapes.world import BACKGROUND, COLORS, PromptSpec

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_BG = np.asarray(BACKGROUND, dtype=np.float64)  # (3,)
_DIRS = np.asarray([COLORS[c] for c in COLOR_NAMES], dtype=np.float64) - _BG  # (C, 3): bg -> color

MIN_AREA = 10  # px at 32x32, scaled with the image area; an 8 px triangle, the smallest object, covers ~30
MAX_LINE_DIST = 90.0  # RGB units off every blend line: not a palette color, treated as background
RELATION_TOLERANCE = 1  # px of overlap allowed between the two extents (blur, apex pixels)
RELATION_SOFTNESS = 2.0  # px: the graded relation (shapes_graded) goes from 0.27 to 0.73 over +-2 px of margin
# RGB units: the graded color (shapes_hue) of a fill halfway from red to orange (~50 away) is 0.61, of a red fill
# for "orange" (101 away) 0.13, of a yellow one (86 away) 0.23; every other pair of palette colors is >= 112 apart.
COLOR_SOFTNESS = 50.0
# shapes_success_strict reads each object's color with a margin: its fill must lie within this fraction of the way
# from its named color to the nearest other palette color (red 30 RGB units: 0.3 x its 101 to orange; orange and
# yellow 26, blue and purple 34, green 60). docs/tuning.md, section 42, measures the base model against it.
COLOR_MARGIN = 0.3
# Shape thresholds on the features of `shape_features`, measured on 900 single-object renders
# (clean | blur sigma 0.8 + color noise std 15): triangle vertical skewness <= -0.52 | -0.33,
# circle and square |skew| <= 0.04 | 0.08; circle corner moment <= 0.68 | 0.81, square >= 1.0
# | 0.93. Thresholds sit inside those gaps.
TRIANGLE_SKEW = 0.2  # |vertical skewness| above this: mass lopsided, a triangle
SQUARE_CORNER = 0.87  # corner moment at least this: a square (disk 2/3, rectangle 1)
_NEIGHBORS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass(frozen=True)
class Component:
    """One detected object. Coordinates in pixels, y grows down; box bounds are inclusive."""

    color: str
    shape: str
    area: int
    cy: float
    cx: float
    top: int
    bottom: int
    left: int
    right: int
    fill: tuple[float, float, float] | None = None  # median RGB of its pixels (None: not measured)


# ----------------------------------------------------------------------------- segmentation

def segment(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel color index and blend weight.

    images: (N, H, W, 3) uint8 -> (labels (N, H, W) int64, -1 = background; alpha (N, H, W, C)
    float32, the fitted blend weight of every color, clipped to [0, 1]).
    """
    offset = images.astype(np.float32) - _BG.astype(np.float32)  # (N, H, W, 3)
    dirs = _DIRS.astype(np.float32)
    sq_len = (dirs**2).sum(axis=1)  # (C,)
    dot = offset @ dirs.T  # (N, H, W, C)
    alpha = np.clip(dot / sq_len, 0.0, 1.0)  # least-squares blend weight, on the segment
    # squared distance to the line point bg + alpha * dir, expanded to avoid a (N, H, W, C, 3) array
    line_sq = (offset**2).sum(axis=-1, keepdims=True) - 2 * alpha * dot + alpha**2 * sq_len
    best = line_sq.argmin(axis=-1)[..., None]  # (N, H, W, 1): the color hypothesis
    # Choose the line first, then threshold its alpha: a half-red edge pixel sits on the red line
    # (and would pass an alpha >= 0.5 test on the orange line).
    is_fg = ((np.take_along_axis(alpha, best, -1) >= 0.5)
             & (np.take_along_axis(line_sq, best, -1) <= MAX_LINE_DIST**2))
    return np.where(is_fg, best, -1)[..., 0], alpha


def connected_components(labels: np.ndarray) -> np.ndarray:
    """8-connected components of equal, non-negative labels, for a whole batch at once.

    labels: (N, H, W) int -> (N, H, W) int64 component ids (flat index of the component's first
    pixel in the batch; -1 on background). Min-label propagation with pointer jumping: shapes
    are compact, so it converges in a handful of sweeps.
    """
    n, h, w = labels.shape
    fg = labels >= 0
    big = n * h * w
    ids = np.where(fg, np.arange(big, dtype=np.int32).reshape(n, h, w), big).astype(np.int32)
    padded_labels = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    same = [(padded_labels[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == labels) & fg for dy, dx in _NEIGHBORS_8]
    padded = np.full((n, h + 2, w + 2), big, dtype=np.int32)
    while True:
        padded[:, 1:-1, 1:-1] = ids
        new = ids.copy()
        for (dy, dx), ok in zip(_NEIGHBORS_8, same):
            np.minimum(new, padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w], out=new, where=ok)
        new[fg] = new.reshape(-1)[new[fg]]  # pointer jumping: follow the root's own id
        if np.array_equal(new, ids):
            return np.where(fg, ids.astype(np.int64), -1)
        ids = new


# ----------------------------------------------------------------------------- shape geometry

def shape_features(mask: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> tuple[float, float]:
    """(vertical skewness, corner moment) of one object's soft coverage.

    mask: (h, w) bool, the component, with at least 2 empty pixels on every side; alpha: (h, w)
    its color's blend weight; background: (h, w) bool, pixels of no color. Coverage is 1 inside
    the component and alpha on its edge and on background pixels touching it, so partial edge
    pixels count fractionally: at 8-13 px a whole pixel row would swing the features.

    Moments about the centroid (dx, dy), weighted by coverage. Vertical skewness
    E[dy^3] / E[dy^2]^1.5: 0 for a circle or square, -2 sqrt(2) / 5 = -0.57 for an upward
    triangle (its mass sits at the base). Corner moment E[dx^2 dy^2] / (E[dx^2] E[dy^2]): 1 for
    any axis-aligned rectangle (x and y independent), 2/3 for a disk (no mass in the corners).
    Both average over every pixel, so color noise mostly cancels, and a rectangle's corner
    moment stays 1 under Gaussian blur (the blurred x and y stay independent).
    """
    h, w = mask.shape
    core = mask[1:-1, 1:-1]
    grown, inner = np.zeros_like(mask), np.zeros_like(mask)
    shifted = {(dy, dx): mask[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] for dy, dx in _NEIGHBORS_8}
    grown[1:-1, 1:-1] = core | np.logical_or.reduce(list(shifted.values()))
    inner[1:-1, 1:-1] = core & shifted[-1, 0] & shifted[1, 0] & shifted[0, -1] & shifted[0, 1]
    # Interior pixels count 1 (clipped noisy alphas would bias them down); edge pixels and the
    # background ring count their alpha, which blur and anti-aliasing leave area-preserving.
    cover = np.where(inner, 1.0, np.where(grown & (mask | background), alpha, 0.0))
    area = cover.sum()
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]
    dy = y - (cover * y).sum() / area
    dx = x - (cover * x).sum() / area
    # floors keep a one-pixel-thin stroke (possible in a generated image) finite
    var_y, var_x = max((cover * dy**2).sum() / area, 1e-3), max((cover * dx**2).sum() / area, 1e-3)
    skew = (cover * dy**3).sum() / area / var_y**1.5
    corner = (cover * dx**2 * dy**2).sum() / area / (var_x * var_y)
    return float(skew), float(corner)


def classify_shape(skew: float, corner: float) -> str:
    """Lopsided mass along y: a triangle (either way up); else full corners: a square; else a circle."""
    if abs(skew) > TRIANGLE_SKEW:
        return "triangle"
    return "square" if corner >= SQUARE_CORNER else "circle"


def find_objects(images: np.ndarray) -> list[list[Component]]:
    """Detected objects per image, largest first. images: (N, H, W, 3) uint8."""
    labels, alpha = segment(images)
    comp_ids = connected_components(labels)
    n, h, w = labels.shape
    pad = ((0, 0), (2, 2), (2, 2))  # room for the soft ring and the dilation around every crop
    labels_p, ids_p = np.pad(labels, pad, constant_values=-1), np.pad(comp_ids, pad, constant_values=-1)
    alpha_p = np.pad(alpha, pad + ((0, 0),))
    objects: list[list[Component]] = [[] for _ in range(n)]
    ids, areas = np.unique(comp_ids[comp_ids >= 0], return_counts=True)
    keep = areas >= MIN_AREA * h * w / 32**2
    for cid, area in zip(ids[keep].tolist(), areas[keep].tolist()):
        i, first = divmod(cid, h * w)  # a component's id is the flat index of its first pixel
        color = int(labels[i].flat[first])
        mask = comp_ids[i] == cid
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        crop = (i, slice(top, bottom + 5), slice(left, right + 5))  # box +- 2 px in padded coords
        skew, corner = shape_features(ids_p[crop] == cid, alpha_p[crop][..., color], labels_p[crop] < 0)
        ys, xs = np.nonzero(mask)
        fill = tuple(float(v) for v in np.median(images[i][mask], axis=0))
        objects[i].append(Component(COLOR_NAMES[color], classify_shape(skew, corner), area,
                                    float(ys.sum() / area), float(xs.sum() / area), top, bottom, left, right, fill))
    return [sorted(found, key=lambda c: -c.area) for found in objects]


# ----------------------------------------------------------------------------- constraints

def standing_for(found: list[Component], color: str, shape: str) -> Component | None:
    """The object standing for (color, shape): one with both if any, else the largest of the color."""
    of_color = [c for c in found if c.color == color]
    return next((c for c in of_color if c.shape == shape), of_color[0] if of_color else None)


def standing_objects(found: list[Component], spec: PromptSpec) -> list[Component | None]:
    """`standing_for` each of the prompt's objects, in the prompt's order."""
    return [standing_for(found, obj.color, obj.shape) for obj in spec.objects]


def relation_margin(subject: Component, other: Component, relation: str) -> float:
    """Pixels by which the subject's extent clears the other's on the `relation` side (y grows down).

    The relation holds when the margin is > 0: "above" is subject.bottom < other.top + RELATION_TOLERANCE.
    """
    tol = RELATION_TOLERANCE
    if relation == "above":
        return float(other.top + tol - subject.bottom)
    if relation == "below":
        return float(subject.top + tol - other.bottom)
    if relation == "left of":
        return float(other.left + tol - subject.right)
    if relation == "right of":
        return float(subject.left + tol - other.right)
    raise ValueError(f"unknown relation {relation!r}")


def fill_distance_sq(fill: tuple[float, float, float], color: str) -> float:
    """Squared RGB distance of a measured fill from the palette's `color`."""
    return float(np.sum((np.asarray(fill) - COLORS[color]) ** 2))


def fill_grade(fill: tuple[float, float, float], color: str, softness: float) -> float:
    """exp(-d^2 / (2 softness^2)), d = the RGB distance of `fill` from the palette's `color`: 1 on it."""
    return float(np.exp(-fill_distance_sq(fill, color) / (2 * softness**2)))


def color_match(component: Component, color: str, softness: float | None = None) -> float:
    """1 when the component was segmented as `color`; else 0, or with `softness` its `fill_grade`: how near an
    object of the wrong color came to the named one."""
    if component.color == color:
        return 1.0
    if softness is None or component.fill is None:
        return 0.0
    return fill_grade(component.fill, color, softness)


def relation_holds(subject: Component, other: Component, relation: str) -> bool:
    """Subject's pixel extent on the `relation` side of the other's (y grows down)."""
    return relation_margin(subject, other, relation) > 0


def constraint_names(spec: PromptSpec) -> list[str]:
    """A name for each entry of `constraints(found, spec)`, in its order ("color 1", "shape 1", ..., "relation",
    "object count"); object i is spec.objects[i - 1], so "1" is a spatial prompt's subject."""
    names = [f"{kind} {i}" for i in range(1, len(spec.objects) + 1) for kind in ("color", "shape")]
    if spec.category == "counting":
        names.append("count of the object")
    elif spec.category == "spatial":
        names.append("relation")
    return names + ["object count"]


def constraints(found: list[Component], spec: PromptSpec, relation_softness: float | None = None,
                color_softness: float | None = None) -> list[float]:
    """The prompt's constraints on the detected objects, in the order the module docstring lists.

    Each is 0 or 1; with `relation_softness` (px) the spatial relation is graded instead,
    sigmoid(margin / softness): 0.5 on the boundary, rising smoothly as the objects move apart the right way.
    With `color_softness` (RGB units) each object's color and color-shape constraints are graded: the best
    `color_match` over the objects (of that shape, for the second), so a triangle drawn red for "an orange
    triangle" scores more the nearer its fill comes to orange.
    """
    checks: list[float] = []
    for obj in spec.objects:
        checks.append(max((color_match(c, obj.color, color_softness) for c in found), default=0.0))
        checks.append(max((color_match(c, obj.color, color_softness) for c in found if c.shape == obj.shape),
                          default=0.0))
    expected = len(spec.objects)
    if spec.category == "counting":
        obj, expected = spec.objects[0], int(spec.count)
        checks.append(sum(c.color == obj.color and c.shape == obj.shape for c in found) == expected)
    elif spec.category == "spatial":
        subject, other = standing_objects(found, spec)
        if subject is None or other is None or subject is other:
            checks.append(False)
        elif relation_softness is None:
            checks.append(relation_holds(subject, other, spec.relation))
        else:
            checks.append(1 / (1 + np.exp(-relation_margin(subject, other, spec.relation) / relation_softness)))
    checks.append(len(found) == expected)
    return checks


def hue_fidelity(found: list[Component], spec: PromptSpec, softness: float = COLOR_SOFTNESS) -> float:
    """Mean over the prompt's objects of the `fill_grade` of the object standing for it (`standing_for`) against its
    named color; 0 for an object not found. Unlike `color_match` it grades objects segmented as the right color too,
    so an object drifting off its hue loses credit before the segmentation calls it another color."""
    picked = standing_objects(found, spec)
    return float(np.mean([fill_grade(c.fill, obj.color, softness) if c is not None and c.fill is not None else 0.0
                          for c, obj in zip(picked, spec.objects)]))


def color_radius(color: str, margin: float = COLOR_MARGIN) -> float:
    """`margin` times the RGB distance from the palette's `color` to the nearest other palette color."""
    return margin * min(float(np.linalg.norm(np.subtract(COLORS[other], COLORS[color], dtype=np.float64)))
                        for other in COLORS if other != color)


def colors_within_margin(found: list[Component], spec: PromptSpec, margin: float = COLOR_MARGIN) -> bool:
    """Whether the object standing for each of the prompt's objects (`standing_for`) has its fill within
    `color_radius` of its named color; False when one is missing or has no measured fill."""
    picked = standing_objects(found, spec)
    return all(c is not None and c.fill is not None and fill_distance_sq(c.fill, obj.color) <= color_radius(
        obj.color, margin) ** 2 for c, obj in zip(picked, spec.objects))


def checked_images(images: np.ndarray, specs: list[PromptSpec]) -> np.ndarray:
    """`images` as an array, after checking it is (N, H, W, 3) with one prompt spec per image."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(specs):
        raise ValueError(f"expected (N, H, W, 3) images for {len(specs)} prompts, got {images.shape}")
    return images


def score_batch(images: np.ndarray, specs: list[PromptSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Dense score (fraction of constraints met) and success (all met).

    images: (N, H, W, 3) uint8; specs: N prompts -> (dense (N,) float64 in [0, 1], success (N,) bool).
    """
    images = checked_images(images, specs)
    checks = [constraints(found, spec) for found, spec in zip(find_objects(images), specs)]
    dense = np.asarray([np.mean(c) for c in checks], dtype=np.float64)
    return dense, np.asarray([all(c) for c in checks], dtype=bool)


def graded_batch(images: np.ndarray, specs: list[PromptSpec], relation_softness: float | None = RELATION_SOFTNESS,
                 color_softness: float | None = None) -> np.ndarray:
    """Dense score with the spatial relation graded by its pixel margin and, given `color_softness`, the colors by
    their distance from the named ones (`constraints`): (N,) in [0, 1].

    Where a binary constraint only says "held or not", the grade says by how much, so nearly every sample carries
    reward signal about what it missed; with both softnesses None it is the dense score.
    """
    images = checked_images(images, specs)
    return np.asarray([np.mean(constraints(found, spec, relation_softness, color_softness))
                       for found, spec in zip(find_objects(images), specs)], dtype=np.float64)


def success_hue_batch(images: np.ndarray, specs: list[PromptSpec], softness: float = COLOR_SOFTNESS) -> np.ndarray:
    """Success graded by hue: 0 where a constraint fails, else `hue_fidelity` (how near every object's fill is to its
    named color): (N,) in [0, 1]. Groups that all fail stay flat; groups that all succeed keep a signal."""
    images = checked_images(images, specs)
    return np.asarray([hue_fidelity(found, spec, softness) if all(constraints(found, spec)) else 0.0
                       for found, spec in zip(find_objects(images), specs)], dtype=np.float64)


def strict_success_batch(images: np.ndarray, specs: list[PromptSpec], margin: float = COLOR_MARGIN) -> np.ndarray:
    """Success with every color read with a margin: 1 where every constraint holds and `colors_within_margin`, else
    0: (N,) float64. An object drifting off its hue fails here before the plain scorer reads it as another color."""
    images = checked_images(images, specs)
    return np.asarray([float(all(constraints(found, spec)) and colors_within_margin(found, spec, margin))
                       for found, spec in zip(find_objects(images), specs)], dtype=np.float64)


def score(image: np.ndarray, spec: PromptSpec) -> tuple[float, bool]:
    """`score_batch` for one (H, W, 3) uint8 image: (dense score in [0, 1], success)."""
    dense, success = score_batch(np.asarray(image)[None], [spec])
    return float(dense[0]), bool(success[0])
