"""Procedural renderer of the toy world: shapes x colours x fill styles x backgrounds.

Every image is drawn from a :class:`Scene` whose content is known exactly, so a generated
image can be judged against ground truth. Rendering is deterministic: image ``i`` of a data
set with seed ``s`` uses ``numpy.random.default_rng([s, i])`` and nothing else.

Geometry: the shape's "radius" is 34-42 % of the image side, its centre is at most 2.5 px
from the middle of the image, and it is rotated by at most 0.15 rad (large, centred shapes make
shape the easiest thing for a tiny model to learn, see docs/toyworld.md). Drawing is done at 4x
supersampling with PIL and box-downsampled, which gives anti-aliased 32x32 images.

Styles are the toy analogue of an artist's style: ``solid`` (filled), ``striped`` (diagonal
stripes with a 4 px period inside a 1 px outline) and ``outlined`` (a hollow 2.5 px border).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
STYLES: tuple[str, ...] = ("solid", "striped", "outlined")
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray")

HEADS: tuple[str, ...] = ("shape", "colour", "style", "background")
CLASSES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "style": STYLES,
    "background": BACKGROUNDS,
}

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (35, 60, 225),
    "yellow": (240, 215, 20),
    "purple": (150, 40, 190),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}

IMAGE_SIZE = 32
SUPERSAMPLE = 4
COLOUR_JITTER = 15
BACKGROUND_JITTER = 10
RADIUS_RANGE = (0.34, 0.42)
MAX_ROTATION = 0.15
MAX_OFFSET = 2.5  # pixels the centre may move from the middle of the image
STRIPE_PERIOD = 4.0  # pixels at the output size
OUTLINE_WIDTH = 2.5  # pixels at the output size


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image (positions in output pixels)."""

    shape: str
    colour: str
    style: str
    background: str
    cx: float
    cy: float
    radius: float
    angle: float
    rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]

    @property
    def labels(self) -> tuple[int, int, int, int]:
        return (
            SHAPES.index(self.shape),
            COLOURS.index(self.colour),
            STYLES.index(self.style),
            BACKGROUNDS.index(self.background),
        )


def _pick(rng: np.random.Generator, options: tuple[str, ...], value: str | None, what: str) -> str:
    if value is None:
        return options[int(rng.integers(len(options)))]
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(options)}")
    return value


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int, same: bool = False):
    if same:
        d = int(rng.integers(-amount, amount + 1))
        return tuple(int(np.clip(c + d, 0, 255)) for c in rgb)
    return tuple(int(np.clip(c + int(rng.integers(-amount, amount + 1)), 0, 255)) for c in rgb)


def sample_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    style: str | None = None,
    background: str | None = None,
    size: int = IMAGE_SIZE,
) -> Scene:
    """Draw a random scene; any attribute given is fixed, the rest are uniform."""
    shape = _pick(rng, SHAPES, shape, "shape")
    colour = _pick(rng, COLOURS, colour, "colour")
    style = _pick(rng, STYLES, style, "style")
    background = _pick(rng, BACKGROUNDS, background, "background")
    radius = float(rng.uniform(*RADIUS_RANGE)) * size
    offset = MAX_OFFSET * size / IMAGE_SIZE
    cx = size / 2 + float(rng.uniform(-offset, offset))
    cy = size / 2 + float(rng.uniform(-offset, offset))
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    rgb = _jitter(COLOUR_RGB[colour], rng, COLOUR_JITTER)
    bg_rgb = _jitter(BACKGROUND_RGB[background], rng, BACKGROUND_JITTER, same=True)
    return Scene(shape, colour, style, background, cx, cy, radius, angle, rgb, bg_rgb)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = 0.78
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle":
        # equilateral, circumradius 1.05, centroid shifted down a little so it looks centred
        pts = [(1.05 * math.cos(a), 1.05 * math.sin(a) + 0.12) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "cross":
        w, length = 0.34, 1.0
        pts = [
            (-w, -length), (w, -length), (w, -w), (length, -w), (length, w), (w, w),
            (w, length), (-w, length), (-w, w), (-length, w), (-length, -w), (-w, -w),
        ]  # fmt: skip
    else:
        raise ValueError(shape)
    c, s_ = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s_), cy + r * (x * s_ + y * c)) for x, y in pts]


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, big: int, width: float | None):
    """A binary ``L`` mask at supersampled size; ``width`` draws only the outline."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        rr = 0.92 * r
        box = [cx - rr, cy - rr, cx + rr, cy + rr]
        if width is None:
            draw.ellipse(box, fill=255)
        else:
            draw.ellipse(box, outline=255, width=max(1, round(width)))
    else:
        pts = _polygon(shape, cx, cy, r, angle)
        if width is None:
            draw.polygon(pts, fill=255)
        else:
            # an outline of the given width, drawn inwards: the filled shape minus a shrunk copy
            draw.polygon(pts, fill=255)
            inner = Image.new("L", (big, big), 0)
            inner_draw = ImageDraw.Draw(inner)
            inner_draw.polygon(_inset(shape, cx, cy, r, angle, width), fill=255)
            mask = Image.fromarray(np.where(np.asarray(inner) > 0, 0, np.asarray(mask)).astype(np.uint8))
    return mask


def _inset(shape: str, cx: float, cy: float, r: float, angle: float, width: float):
    """The polygon moved inwards by ``width`` (exact for convex shapes; the cross is rebuilt)."""
    if shape == "square":
        return _polygon("square", cx, cy, r - width / 0.78, angle)
    if shape == "triangle":
        # inradius of the equilateral triangle is half its circumradius
        r_in = 1.05 * r / 2
        scale = max(r_in - width, 0.1) / r_in
        pts = _polygon("triangle", 0.0, 0.0, r, angle)
        # centroid of our triangle sits at (0, 0.12 r) before rotation
        c, s_ = math.cos(angle), math.sin(angle)
        gx, gy = -0.12 * r * s_, 0.12 * r * c
        return [(cx + gx + (x - gx) * scale, cy + gy + (y - gy) * scale) for x, y in pts]
    if shape == "cross":
        w, length = 0.34 * r - width, 1.0 * r - width
        pts = [
            (-w, -length), (w, -length), (w, -w), (length, -w), (length, w), (w, w),
            (w, length), (-w, length), (-w, w), (-length, w), (-length, -w), (-w, -w),
        ]  # fmt: skip
        c, s_ = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s_, cy + x * s_ + y * c) for x, y in pts]
    raise ValueError(shape)


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render ``scene`` to a ``uint8`` array of shape ``[size, size, 3]``."""
    k = SUPERSAMPLE
    big = size * k
    cx, cy, r = scene.cx * k, scene.cy * k, scene.radius * k
    if scene.style == "solid":
        alpha = np.asarray(_shape_mask(scene.shape, cx, cy, r, scene.angle, big, None)) > 0
    elif scene.style == "outlined":
        alpha = np.asarray(_shape_mask(scene.shape, cx, cy, r, scene.angle, big, OUTLINE_WIDTH * k)) > 0
    elif scene.style == "striped":
        fill = np.asarray(_shape_mask(scene.shape, cx, cy, r, scene.angle, big, None)) > 0
        edge = np.asarray(_shape_mask(scene.shape, cx, cy, r, scene.angle, big, 1.0 * k)) > 0
        yy, xx = np.mgrid[0:big, 0:big]
        stripes = ((xx + yy) // int(STRIPE_PERIOD * k / 2)) % 2 == 0
        alpha = edge | (fill & stripes)
    else:
        raise ValueError(scene.style)
    img = np.empty((big, big, 3), dtype=np.float32)
    img[:] = np.asarray(scene.bg_rgb, dtype=np.float32)
    img[alpha] = np.asarray(scene.rgb, dtype=np.float32)
    small = img.reshape(size, k, size, k, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def render(
    shape: str | None = None,
    colour: str | None = None,
    style: str | None = None,
    background: str | None = None,
    seed: int = 0,
    size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, Scene]:
    """Render one image; unspecified attributes are drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, shape, colour, style, background, size=size)
    return render_scene(scene, size=size), scene


def render_dataset(
    n: int, seed: int, size: int = IMAGE_SIZE, start: int = 0, tinted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render images ``start .. start+n-1`` of the data set ``seed``.

    Returns ``(images uint8 [n, size, size, 3], labels int64 [n, 4])``, labels in the order of
    :data:`HEADS`. Image ``i`` depends only on ``(seed, i)``, so chunks can be rendered in any
    order or in parallel and give the same data.

    ``tinted`` renders the same scenes with the background moved towards a random colour
    (:func:`tint_background`): backgrounds that are not in the world, as a diffusion model draws
    them when the prompt names none. They train and test the judge's colour, shape and style
    heads against the background; the ``background`` label is that of the untinted scene.
    """
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, len(HEADS)), dtype=np.int64)
    for j in range(n):
        rng = np.random.default_rng([seed, start + j])
        scene = sample_scene(rng, size=size)
        if tinted:
            scene = tint_background(scene, np.random.default_rng([seed, start + j, 1]))
        images[j] = render_scene(scene, size=size)
        labels[j] = scene.labels
    return images, labels


#: how far :func:`tint_background` moves a background towards its random colour
TINT_RANGE = (0.15, 0.7)


def tint_background(scene: Scene, rng: np.random.Generator) -> Scene:
    """``scene`` with its background moved a fraction ``w ~ U(TINT_RANGE)`` of the way to a colour
    drawn uniformly from the RGB cube (pale greens, pinks, oranges: what the toy model draws when
    a prompt leaves the background open)."""
    target = rng.uniform(0, 255, size=3)
    w = rng.uniform(*TINT_RANGE)
    bg = (1 - w) * np.asarray(scene.bg_rgb, dtype=np.float64) + w * target
    return replace(scene, bg_rgb=tuple(int(v) for v in np.clip(np.rint(bg), 0, 255)))
