"""Pure-numpy rendering of one embedded-dataset image (see :mod:`distill.data.synthetic_coco`).

Each of the eight classes has its own shape *and* texture, so both cues identify it; colours
are random per instance. Objects are drawn in order (later ones occlude earlier ones) and only
objects whose visible part is at least ``MIN_VISIBLE_FRACTION`` of their full extent (which
includes the part outside the image) are returned.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

EMBEDDED_CLASSES = ("disc", "square", "triangle", "ring", "cross", "star", "capsule", "hexagon")
MIN_VISIBLE_FRACTION = 0.3  # objects occluded/truncated below this are not annotated
EMPTY_EVERY = 32  # image index i with i % 32 == 5 has no objects (~3%, present in any split)
MIN_DIAMETER = 8.0  # smallest object extent in pixels; the largest is half the shorter side


def _photo_background(rng: np.random.Generator, photos, h: int, w: int) -> np.ndarray:
    """Random crop (35-100% of the largest crop with the output aspect) rescaled to (h, w, 3)."""
    photo = photos[int(rng.integers(len(photos)))]
    ch = rng.uniform(0.35, 1.0) * min(photo.height, photo.width * h / w)
    cw = ch * w / h
    x0, y0 = rng.uniform(0, photo.width - cw), rng.uniform(0, photo.height - ch)
    crop = photo.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    out = np.asarray(crop, dtype=np.float32) * rng.uniform(0.7, 1.1)
    return out[:, ::-1] if rng.random() < 0.5 else out


def _procedural_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour noise at two scales + a linear gradient + grain, shape (h, w, 3)."""
    out = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 160.0), (12, 70.0)):
        grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        out += amp / 255 * np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    out += ramp[..., None] * (rng.uniform(-60, 60, 3)).astype(np.float32)
    gray = out.mean(axis=2, keepdims=True)
    out = gray + 0.6 * (out - gray)  # tone the colours down so the objects stand out
    return out + rng.normal(0, 6, (h, w, 3)).astype(np.float32)


# Shapes: boolean masks over normalised object coordinates (u, v); all fit in the unit disc.
def _star(u, v):
    sector = 2 * np.pi / 5
    phi = np.abs(np.mod(np.arctan2(v, u) + sector / 2, sector) - sector / 2)
    r = np.hypot(u, v)
    x, y = r * np.cos(phi), r * np.sin(phi)
    bx, by = 0.42 * np.cos(sector / 2), 0.42 * np.sin(sector / 2)  # inner vertex
    return (bx - 1) * y - by * (x - 1) >= 0  # same side of outer->inner edge as the origin


def _polygon(u, v, normal_degrees, apothem):
    inside = np.ones(u.shape, bool)
    for a in np.deg2rad(normal_degrees):
        inside &= np.cos(a) * u + np.sin(a) * v <= apothem
    return inside


def _capsule_dist(u, v):
    return np.hypot(np.maximum(np.abs(u) - 0.5, 0), v)


_SHAPES = {
    "disc": lambda u, v: np.hypot(u, v) <= 1,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.72,
    "triangle": lambda u, v: _polygon(u, v, (-90, 30, 150), 0.5),
    "ring": lambda u, v: (np.hypot(u, v) <= 1) & (np.hypot(u, v) >= 0.58),
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.27) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.27) & (np.abs(u) <= 0.95))
    ),
    "star": _star,
    "capsule": lambda u, v: _capsule_dist(u, v) <= 0.45,
    "hexagon": lambda u, v: _polygon(u, v, (0, 60, 120, 180, 240, 300), 0.87),
}


def _texture(name: str, u, v, p: float, rng: np.random.Generator) -> np.ndarray:
    """Mixing weight in [0, 1] between the two instance colours; ``p`` scales the period."""
    if name == "disc":  # radial gradient
        return np.clip(0.8 * np.hypot(u, v), 0, 1)
    if name == "square":  # checkerboard
        return (np.floor(u / (0.36 * p)) + np.floor(v / (0.36 * p))) % 2
    if name == "triangle":  # stripes
        return np.floor(v / (0.22 * p)) % 2
    if name == "ring":  # flat colour
        return np.zeros_like(u)
    if name == "cross":  # polka dots
        q = 0.3 * p
        return (np.hypot(np.mod(u, q) - q / 2, np.mod(v, q) - q / 2) <= 0.28 * q).astype(float)
    if name == "star":  # binary speckle noise
        return (rng.random(u.shape) < 0.5).astype(float)
    if name == "capsule":  # contour bands around the spine
        return np.floor(_capsule_dist(u, v) / (0.15 * p)) % 2
    q = 0.34 * p  # hexagon: grid of lines
    return ((np.mod(u, q) < 0.3 * q) | (np.mod(v, q) < 0.3 * q)).astype(float)


def _instance_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A saturated bright colour and a dark roughly complementary one, each shape (3,)."""
    hue = rng.random()
    c1 = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    c2 = colorsys.hsv_to_rgb((hue + rng.uniform(0.35, 0.65)) % 1, rng.uniform(0.3, 1.0),
                             rng.uniform(0.1, 0.4))  # fmt: skip
    return np.array(c1, np.float32) * 255, np.array(c2, np.float32) * 255


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def _sample_object(rng: np.random.Generator, h: int, w: int, boxes: list) -> dict | None:
    """Draws one object: class, log-uniform size, aspect, position, rotation and colours.

    Returns:
        ``None`` if it falls fully outside the image, else a dict with ``category_id``,
        ``full_area`` (pixels of the whole shape, also outside the image), ``region`` (image
        slices), ``mask`` (bool, region-shaped) and ``pixels`` (float RGB, region-shaped). The
        object's bounding square is appended to ``boxes`` (used to spread objects out).
    """
    cat = int(rng.integers(len(EMBEDDED_CLASSES)))
    diameter = np.exp(rng.uniform(np.log(MIN_DIAMETER), np.log(0.5 * min(h, w))))
    aspect = np.exp(rng.uniform(-0.25, 0.25))
    su, sv = diameter / 2 * np.sqrt(aspect), diameter / 2 / np.sqrt(aspect)
    radius = 1.08 * max(su, sv) + 1
    for _try in range(10):  # avoid stacking objects right on top of each other
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if all(_box_iou(box, other) < 0.3 for other in boxes):
            break
    theta = rng.uniform(0, 2 * np.pi)
    x0, y0 = int(np.floor(cx - radius)), int(np.floor(cy - radius))
    yy, xx = np.mgrid[y0 : int(np.ceil(cy + radius)) + 1, x0 : int(np.ceil(cx + radius)) + 1]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy  # pixel centres relative to the object centre
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / su
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / sv
    name = EMBEDDED_CLASSES[cat]
    mask = _SHAPES[name](u, v)
    period = max(1.0, 2.5 / (0.22 * min(su, sv)))  # keep texture periods >= ~2.5 px
    t = _texture(name, u, v, period, rng)[..., None]
    c1, c2 = _instance_colours(rng)
    boxes.append(box)
    sy = slice(max(0, -y0), max(0, min(mask.shape[0], h - y0)))  # clip the grid to the image
    sx = slice(max(0, -x0), max(0, min(mask.shape[1], w - x0)))
    if sy.stop <= sy.start or sx.stop <= sx.start:
        return None
    return {
        "category_id": cat + 1,
        "full_area": int(mask.sum()),
        "region": (slice(y0 + sy.start, y0 + sy.stop), slice(x0 + sx.start, x0 + sx.stop)),
        "mask": mask[sy, sx],
        "pixels": ((1 - t) * c1 + t * c2)[sy, sx],
    }


def render_image(
    seed: int,
    split: str,
    index: int,
    image_size_range: tuple[int, int] = (128, 256),
    photos: Sequence[Image.Image] = (),
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Renders one image and the visible masks of its annotated objects.

    Args:
        seed: Base seed; the image uses ``PCG64([seed, crc32(split), index])`` alone.
        split: Split name (mixed into the seed so splits never share images).
        index: Image index within the split.
        image_size_range: Inclusive range of each side in pixels (height and width drawn apart).
        photos: RGB photos to crop backgrounds from; empty means procedural backgrounds.

    Returns:
        ``(image, objects)``: uint8 array (H, W, 3), and a list of ``(category_id, mask)`` with
        ``mask`` a bool array (H, W) of the visible pixels, in drawing order.
    """
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(split.encode()), index]))
    h, w = (int(x) for x in rng.integers(image_size_range[0], image_size_range[1] + 1, 2))
    if photos:
        img = _photo_background(rng, photos, h, w)
    else:
        img = _procedural_background(rng, h, w)
    num = 0 if index % EMPTY_EVERY == 5 else int(rng.integers(1, 7))
    boxes: list[tuple[float, ...]] = []
    sampled = [_sample_object(rng, h, w, boxes) for _ in range(num)]
    specs = [obj for obj in sampled if obj is not None]
    # Objects too occluded or truncated are erased rather than left unannotated; erasing one
    # only uncovers the others, so this terminates (at most one pass per object).
    while True:
        owner = np.full((h, w), -1, np.int32)  # index of the object that owns each pixel
        for k, obj in enumerate(specs):
            owner[obj["region"]][obj["mask"]] = k
        visible = [owner == k for k in range(len(specs))]
        keep = [
            area >= max(MIN_VISIBLE_FRACTION * obj["full_area"], 6)
            for obj, area in zip(specs, (int(m.sum()) for m in visible))
        ]
        if all(keep):
            break
        specs = [obj for obj, ok in zip(specs, keep) if ok]
    img = np.ascontiguousarray(img)
    for obj in specs:
        img[obj["region"]][obj["mask"]] = obj["pixels"][obj["mask"]]
    objects = [(obj["category_id"], vis) for obj, vis in zip(specs, visible)]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects
