"""Embedded demo dataset: procedural industrial "parts" with pixel-annotated defects, MVTec AD layout.

Why: the whole pipeline (index, split, diffusion, synthesis, segmentation, evaluation) must be runnable
offline and in CI without the licensed MVTec data. The images are SYNTHETIC: a turned metal disk on a dark
uniform background, with three defect types drawn on the part (hole, scratch, stain). Everything is numpy
vectorised and deterministic from the seed, so a folder generated twice is byte-identical.

One module (~470 lines) on purpose: the part renderer, the three defect painters and the writer share one
part geometry and one seeded stream per image; split apart they would pass that state around.

Layout written (same as MVTec AD):
    <root>/<class_name>/train/good/000.png ...
    <root>/<class_name>/test/good/000.png ...
    <root>/<class_name>/test/<type>/000.png ...
    <root>/<class_name>/ground_truth/<type>/000_mask.png   (L mode, 0/255, same size as the image)
    <root>/<class_name>/README.txt, demo_params.json, .complete (written last)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

DEMO_CLASS = "demo_part"
DEMO_ROOT = "data/demo"  # where `make demo-data` writes it (relative to the working directory)
DEFECT_TYPES: tuple[str, ...] = ("hole", "scratch", "stain")  # sorted: condition k -> DEFECT_TYPES[k-1]
GENERATOR_VERSION = 1  # bump when the rendered pixels change, so stale folders are detected
PARAMS_FILE = "demo_params.json"
COMPLETE_MARKER = ".complete"

# Stable random-stream ids: adding a defect type must not change the images of the existing ones.
_STREAMS = {"train": 0, "test_good": 1, "hole": 2, "scratch": 3, "stain": 4}
# Fraction of the blend weight below which a defect leaves the pixel untouched (keeps masks exact).
_ALPHA_MIN = 0.3


class DemoDatasetError(FileExistsError):
    """The target folder exists but does not hold a matching, complete demo dataset."""


@dataclass(frozen=True)
class PartGeometry:
    """Where the part lies in the image (pixel units, x to the right, y down, pixel centres at i + 0.5)."""

    size: int
    cx: float
    cy: float
    radius: float
    angle: float  # rotation of the part (brushing direction), radians

    @property
    def defect_radius(self) -> float:
        """Defects stay inside this radius: off the bevelled rim, so they are always on the part."""
        return self.radius * 0.90 - 1.0

    def _dist(self) -> np.ndarray:
        c = np.arange(self.size, dtype=np.float32) + 0.5
        return np.hypot(c[None, :] - self.cx, c[:, None] - self.cy)

    def disk_mask(self) -> np.ndarray:
        """(H, W) bool: the part silhouette (ground truth for foreground estimation)."""
        return self._dist() <= self.radius

    def defect_region(self) -> np.ndarray:
        """(H, W) bool: pixels where defects may be drawn."""
        return self._dist() <= self.defect_radius


@dataclass
class DemoSample:
    """One rendered item: `image` is what gets written; `clean` is the same part without the defect."""

    image: np.ndarray  # (H, W, 3) float32 [0, 1]
    clean: np.ndarray  # (H, W, 3) float32 [0, 1]
    mask: np.ndarray  # (H, W) bool, True = defect
    geometry: PartGeometry
    defect_type: str | None


# ----------------------------------------------------------------------------------------------- noise
def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1] (smoothstep-interpolated random lattices): cheap Perlin-like texture."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = cells * 2**o
        grid = rng.random((n + 1, n + 1), dtype=np.float32)
        ys = (np.arange(h, dtype=np.float32) + 0.5) * (n / h)
        xs = (np.arange(w, dtype=np.float32) + 0.5) * (n / w)
        iy, ix = np.minimum(ys.astype(np.int64), n - 1), np.minimum(xs.astype(np.int64), n - 1)
        fy, fx = ys - iy, xs - ix
        fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
        g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
        g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
        top, bot = g00 + (g01 - g00) * fx, g10 + (g11 - g10) * fx
        out += amp * (top + (bot - top) * fy)
        total += amp
        amp *= 0.5
    return out / total


def _noise_1d(rng: np.random.Generator, coords: np.ndarray, n: int, smooth: float) -> np.ndarray:
    """Zero-mean 1-D noise looked up at `coords` (in samples, 0..n): lathe rings / brushing streaks."""
    base = rng.standard_normal(n + 2).astype(np.float32)
    if smooth > 0:
        base = ndimage.gaussian_filter1d(base, smooth, mode="wrap")
        base /= max(float(base.std()), 1e-6)
    return np.interp(coords, np.arange(n + 2, dtype=np.float32), base).astype(np.float32)


# ------------------------------------------------------------------------------------------------ part
def render_part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, PartGeometry]:
    """A turned metal disk on a dark plain background: returns (image (H,W,3) float32 [0,1], geometry).

    Variation per image: centre shift (+-3%), rotation (brushing direction), brightness and tint, light
    direction; the disk covers about 50-60% of the image.
    """
    s = size
    radius = s * rng.uniform(0.40, 0.44)
    cx, cy = s / 2 + s * rng.uniform(-0.03, 0.03, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    geom = PartGeometry(size=s, cx=float(cx), cy=float(cy), radius=float(radius), angle=float(angle))

    c = np.arange(s, dtype=np.float32) + 0.5
    x, y = c[None, :] - np.float32(cx), c[:, None] - np.float32(cy)
    r = np.hypot(x, y)
    rn = r / np.float32(radius)

    # Background: dark, near-uniform, faint vertical gradient and sensor noise.
    bg_level = rng.uniform(0.08, 0.16)
    bg_tint = rng.uniform(-0.012, 0.012, size=3)
    grad = np.float32(rng.uniform(-0.02, 0.02)) * (c[:, None] / s - 0.5)
    bg = (bg_level + bg_tint)[None, None, :] + grad[..., None] + 0.006 * rng.standard_normal((s, s, 3))

    # Metal: base brightness, light direction, lathe rings (radial), brushed face (linear), mottling.
    level = rng.uniform(0.55, 0.72)
    tint = np.array([0.0, 0.005, 0.02]) + rng.uniform(-0.015, 0.015, size=3)  # slightly cool steel
    la = rng.uniform(-0.75, -0.45) * np.pi  # light from the upper left, jittered
    lx, ly = np.float32(np.cos(la)), np.float32(np.sin(la))
    shade = 1.0 + 0.08 * (x * lx + y * ly) / np.float32(radius)

    rings = _noise_1d(rng, rn * 180.0, 200, smooth=0.8)  # concentric turning marks
    u = -x * np.float32(np.sin(angle)) + y * np.float32(np.cos(angle))  # across the brushing direction
    brush = _noise_1d(rng, (u + s) * 1.5, 3 * s + 4, smooth=0.6)
    mottle = _value_noise(rng, s, s, cells=3, octaves=3) - 0.5
    face = rn < 0.62
    tex = np.where(face, 0.028 * brush, 0.022 * rings) + 0.05 * mottle

    # Relief: machined groove between face and ring, raised hub, bevelled outer rim lit from one side.
    groove = np.exp(-(((rn - 0.62) * radius / 0.9) ** 2))
    hub_edge = np.exp(-(((rn - 0.18) * radius / 0.8) ** 2))
    hub = (rn < 0.18) * 0.035
    bevel_w = 0.07
    bevel = np.clip((rn - (1 - bevel_w)) / bevel_w, 0, 1)
    ndot = (x * lx + y * ly) / np.maximum(r, 1e-3)
    relief = hub - 0.13 * groove - 0.07 * hub_edge + bevel * (0.09 * ndot - 0.03)

    metal_l = level * shade + tex + relief
    metal = metal_l[..., None] + tint[None, None, :] + 0.008 * rng.standard_normal((s, s, 3))

    cover = np.clip(radius - r + 0.5, 0, 1)[..., None]  # anti-aliased silhouette
    img = bg * (1 - cover) + metal * cover
    return np.clip(img, 0, 1).astype(np.float32), geom


# --------------------------------------------------------------------------------------------- defects
def _composite(base: np.ndarray, target: np.ndarray, alpha: np.ndarray, region: np.ndarray):
    """Blend `target` over `base` by `alpha`; pixels below _ALPHA_MIN or off-region stay bit-identical.

    This is what makes the mask exact: every changed pixel is in the mask, and every mask pixel gets at
    least _ALPHA_MIN of a visible change.
    """
    mask = (alpha >= _ALPHA_MIN) & region
    a = alpha[..., None].astype(np.float32)
    blended = np.clip(base * (1 - a) + target * a, 0, 1).astype(np.float32)
    return np.where(mask[..., None], blended, base), mask


def _scratch(img, geom, rng, region):
    """Thin curved strokes (quadratic Bezier), bright (polished) or dark (grooved), depth varying along."""
    s, sc = geom.size, geom.size / 128.0
    rmax = geom.defect_radius
    centre = np.array([geom.cx, geom.cy])
    hw = rng.uniform(0.45, 1.1) * sc  # half width in pixels
    sign = 1.0 if rng.random() < 0.6 else -1.0
    mag = rng.uniform(0.12, 0.35)
    n_strokes = 1 if rng.random() < 0.7 else 2
    c = np.arange(s, dtype=np.float32) + 0.5
    cov = np.zeros((s, s), np.float32)
    mod = np.zeros((s, s), np.float32)
    for _ in range(n_strokes):
        for _attempt in range(64):
            length = rng.uniform(0.3, 0.8) * rmax
            rr, phi, direction = rmax * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
            p0 = centre + rr * np.array([np.cos(phi), np.sin(phi)])
            d = np.array([np.cos(direction), np.sin(direction)])
            p2 = p0 + length * d
            p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * rng.uniform(-0.3, 0.3) * length
            t = np.linspace(0, 1, 33)[:, None]
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            if np.all(np.hypot(*(pts - centre).T) < rmax - hw - 1):
                break
        else:  # fallback that always fits: short straight stroke through the centre
            pts = centre + np.linspace(-0.3, 0.3, 33)[:, None] * rmax * np.array([1.0, 0.0])
        # Distance from every pixel in the stroke's bounding box to the polyline, vectorised over segments.
        lo = np.maximum(np.floor(pts.min(0) - hw - 2).astype(int), 0)
        hi = np.minimum(np.ceil(pts.max(0) + hw + 2).astype(int), s)
        gx, gy = np.meshgrid(c[lo[0] : hi[0]], c[lo[1] : hi[1]])
        p = np.stack([gx.ravel(), gy.ravel()], 1)[:, None, :]  # (N, 1, 2)
        a, b = pts[:-1][None], pts[1:][None]  # (1, K, 2)
        ab = b - a
        tt = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
        dist = np.linalg.norm(p - (a + tt[..., None] * ab), axis=-1)  # (N, K)
        k = dist.argmin(1)
        along = (k + tt[np.arange(len(k)), k]) / (len(pts) - 1)  # 0..1 along the stroke
        dmin = dist[np.arange(len(k)), k].reshape(gx.shape)
        c_here = np.clip(hw + 0.5 - dmin, 0, 1).astype(np.float32)
        m_here = (0.55 + 0.45 * np.sqrt(np.sin(np.pi * along))).reshape(gx.shape).astype(np.float32)
        sl = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        better = c_here > cov[sl]
        cov[sl] = np.where(better, c_here, cov[sl])
        mod[sl] = np.where(better, m_here, mod[sl])
    target = img + np.float32(sign * mag) * mod[..., None]
    return _composite(img, target, cov, region)


def _hole(img, geom, rng, region):
    """Dark elliptic pit with a lit inner wall and a raised burr rim (highlight on the lit side)."""
    s, sc = geom.size, geom.size / 128.0
    a_ax = rng.uniform(3.5, 8.0) * sc
    b_ax = a_ax * rng.uniform(0.6, 1.0)
    rim_w = rng.uniform(0.25, 0.45)
    reach = a_ax * (1 + rim_w) + 1
    rr = max(geom.defect_radius - reach, 0.0) * np.sqrt(rng.random())
    phi = rng.uniform(0, 2 * np.pi)
    hx, hy = geom.cx + rr * np.cos(phi), geom.cy + rr * np.sin(phi)
    rot = rng.uniform(0, np.pi)
    depth = rng.uniform(0.15, 0.5)  # floor brightness factor: varies the contrast
    c = np.arange(s, dtype=np.float32) + 0.5
    x, y = c[None, :] - np.float32(hx), c[:, None] - np.float32(hy)
    u = x * np.float32(np.cos(rot)) + y * np.float32(np.sin(rot))
    v = -x * np.float32(np.sin(rot)) + y * np.float32(np.cos(rot))
    rho = np.sqrt((u / a_ax) ** 2 + (v / b_ax) ** 2)
    px = np.float32(np.sqrt(a_ax * b_ax))  # pixels per unit rho, for anti-aliasing
    light = -0.6 * np.pi
    cosl = (x * np.float32(np.cos(light)) + y * np.float32(np.sin(light))) / np.maximum(np.hypot(x, y), 1e-3)
    lum = img.mean(-1, keepdims=True)
    floor = img * depth - (0.10 * cosl * np.clip(rho, 0, 1) ** 2)[..., None] * lum  # far wall catches light
    rim = img + ((0.07 + 0.06 * cosl) * (1.0 - 0.5 * np.clip((rho - 1) / rim_w, 0, 1)))[..., None]
    inner = np.clip((1 - rho) * px + 0.5, 0, 1)[..., None]
    target = inner * floor + (1 - inner) * rim
    alpha = np.clip((1 + rim_w - rho) * px + 0.5, 0, 1)
    return _composite(img, target, alpha, region)


_STAIN_COLOURS = np.array(
    [[0.55, 0.30, 0.12], [0.16, 0.13, 0.10], [0.36, 0.46, 0.26], [0.92, 0.89, 0.80], [0.30, 0.22, 0.40]],
    np.float32,
)  # rust, oil, coolant residue, white deposit, purple tint


def _stain(img, geom, rng, region):
    """Soft coloured blob with an irregular noise boundary and a darker drying ring; mask = the blob."""
    s = geom.size
    rad = s * rng.uniform(0.06, 0.15)
    rr = max(geom.defect_radius - 0.6 * rad, 0.0) * np.sqrt(rng.random())
    phi = rng.uniform(0, 2 * np.pi)
    sx, sy = geom.cx + rr * np.cos(phi), geom.cy + rr * np.sin(phi)
    c = np.arange(s, dtype=np.float32) + 0.5
    d = np.hypot(c[None, :] - np.float32(sx), c[:, None] - np.float32(sy))
    wobble = rng.uniform(1.0, 1.6) * (_value_noise(rng, s, s, cells=5, octaves=4) - 0.5)
    field = 1 - d / np.float32(rad) + wobble
    blob = (field > 0) & region
    lab, n = ndimage.label(blob)
    if n > 1:  # keep the piece containing most of the stain
        sizes = ndimage.sum_labels(blob, lab, index=np.arange(1, n + 1))
        blob = lab == (1 + int(np.argmax(sizes)))
    blob = ndimage.binary_fill_holes(blob) & region
    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))] + rng.uniform(-0.05, 0.05, size=3).astype(np.float32)
    strength = rng.uniform(0.45, 0.85)
    lum = img.mean(-1, keepdims=True)
    target = colour[None, None, :] * (0.75 + 0.5 * lum)  # keeps the metal texture showing through
    ring = np.exp(-np.maximum(field, 0) / 0.12)  # pigment collects at the drying edge
    blotch = 0.75 + 0.5 * _value_noise(rng, s, s, cells=8, octaves=2)
    alpha = np.clip(strength * (0.6 + 0.4 * ring) * blotch, _ALPHA_MIN, 1)
    alpha = np.where(blob, alpha, 0).astype(np.float32)
    return _composite(img, target, alpha, region)


_DEFECTS = {"hole": _hole, "scratch": _scratch, "stain": _stain}


def add_defect(
    image: np.ndarray, geometry: PartGeometry, defect_type: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect on the part: returns (image, mask (H,W) bool). Pixels outside the mask are untouched.

    Re-draws (same rng, so still deterministic) if a defect came out too small to be a useful example.
    """
    if defect_type not in _DEFECTS:
        raise ValueError(f"unknown demo defect type {defect_type!r}; expected one of {DEFECT_TYPES}")
    region = geometry.defect_region()
    min_area = max(6, int(8 * (geometry.size / 128.0) ** 2))
    for _ in range(20):
        out, mask = _DEFECTS[defect_type](image, geometry, rng, region)
        if mask.sum() >= min_area:
            return out.astype(np.float32), mask
    return out.astype(np.float32), mask


def render_sample(seed: int, size: int, stream: str, index: int) -> DemoSample:
    """Render item `index` of `stream` ("train", "test_good" or a defect type) exactly as the dataset has it."""
    if stream not in _STREAMS:
        raise ValueError(f"unknown demo stream {stream!r}; expected one of {sorted(_STREAMS)}")
    rng = np.random.default_rng([int(seed), _STREAMS[stream], int(index)])
    clean, geom = render_part(rng, size)
    if stream in ("train", "test_good"):
        return DemoSample(clean, clean, np.zeros((size, size), bool), geom, None)
    image, mask = add_defect(clean, geom, stream, rng)
    return DemoSample(image, clean, mask, geom, stream)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 for the demo PNGs: round half to EVEN, unlike ``data.io.to_uint8`` (half up).
    Kept on purpose: the demo parts hit exact .5 values often, and the half-up rule changes about a quarter
    of the demo dataset's PNGs (so every published demo number); this quantises generated data, not images
    read back from disk."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- writing
_README = """SYNTHETIC DEMO DATA - generated by fast-lightning (fast_lightning.data.demo_dataset), not real images.

Procedural "parts" (a turned metal disk on a dark plain background) in the MVTec AD folder layout, so the
whole pipeline can run offline without licensed data. Defect types, all drawn on the part and annotated
with exact pixel masks (ground_truth/<type>/NNN_mask.png, 0/255):
  hole    - dark elliptic pit with a lit wall and a raised rim
  scratch - thin curved bright or dark strokes
  stain   - soft coloured blob with an irregular boundary
Results on this data say nothing about performance on real industrial images.

Generator parameters (also in {params_file}):
{params}
Regenerate with fast_lightning.data.demo_dataset.generate_demo_dataset(root, overwrite=True) or delete this folder.
"""


def _params(class_name, seed, size, n_train, n_test_good, defects_per_type) -> dict:
    return {
        "generator": "fast_lightning.data.demo_dataset",
        "generator_version": GENERATOR_VERSION,
        "class_name": class_name,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "defects_per_type": defects_per_type,
        "defect_types": list(DEFECT_TYPES),
    }


def _read_params(folder: Path) -> dict | None:
    try:
        return json.loads((folder / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete_match(folder: Path, params: dict) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and _read_params(folder) == params


def _save_png(array: np.ndarray, path: Path, mode: str) -> None:
    Image.fromarray(array, mode=mode).save(path, format="PNG", compress_level=6)


def _write_dataset(folder: Path, params: dict) -> None:
    seed, size = params["seed"], params["size"]
    jobs = [("train", "train/good", params["n_train"]), ("test_good", "test/good", params["n_test_good"])]
    jobs += [(t, f"test/{t}", params["defects_per_type"]) for t in DEFECT_TYPES]
    for stream, sub, count in jobs:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if stream in DEFECT_TYPES:
            (folder / "ground_truth" / stream).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sample = render_sample(seed, size, stream, i)
            _save_png(to_uint8(sample.image), folder / sub / f"{i:03d}.png", "RGB")
            if stream in DEFECT_TYPES:
                mask = sample.mask.astype(np.uint8) * 255
                _save_png(mask, folder / "ground_truth" / stream / f"{i:03d}_mask.png", "L")
    text = json.dumps(params, indent=2, sort_keys=True) + "\n"
    (folder / PARAMS_FILE).write_text(text)
    (folder / "README.txt").write_text(_README.format(params_file=PARAMS_FILE, params=text))
    (folder / COMPLETE_MARKER).write_text("ok\n")  # last: its presence means the folder is whole


def generate_demo_dataset(
    root: str | os.PathLike,
    class_name: str = DEMO_CLASS,
    seed: int = 0,
    size: int = 128,
    n_train: int = 60,
    n_test_good: int = 12,
    defects_per_type: int = 9,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) the synthetic demo class folder `<root>/<class_name>` and return its path.

    Idempotent: a complete folder generated with the same parameters is returned untouched. A folder with
    other parameters (or not generated by us) raises DemoDatasetError unless overwrite=True; overwrite never
    deletes a folder that lacks our demo_params.json (it might be real data). Generation happens in a hidden
    sibling folder that is renamed into place at the end, so a crash never leaves a half-written class.
    """
    if int(size) < 32:
        raise ValueError(f"demo size must be >= 32, got {size}")
    if min(int(n_train), int(n_test_good), int(defects_per_type)) < 1 or int(seed) < 0:
        raise ValueError("demo counts must be >= 1 and seed >= 0")
    if not class_name or "/" in class_name or "\\" in class_name or class_name.startswith("."):
        raise ValueError(f"invalid demo class name {class_name!r}")
    params = _params(class_name, int(seed), int(size), int(n_train), int(n_test_good), int(defects_per_type))
    root = Path(root)
    target = root / class_name

    if target.exists():
        if _is_complete_match(target, params):
            return target
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        elif not overwrite:
            found = _read_params(target)
            if found and found != params:
                why = "was generated with different parameters"
            else:
                why = "is not a complete fast-lightning demo dataset"
            raise DemoDatasetError(
                f"Demo dataset folder {target} {why} (found {found}, requested {params}). "
                f"Pass overwrite=True to regenerate it, or delete {target} yourself."
            )
        elif _read_params(target) is None:
            raise DemoDatasetError(
                f"Refusing to overwrite {target}: it has no {PARAMS_FILE}, so it may not be demo data. "
                f"Delete it yourself or choose another root/class_name."
            )

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{class_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _write_dataset(tmp, params)
        if target.exists():  # overwrite=True: move the old one aside, then swap in the new one
            trash = root / f".{class_name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if not _is_complete_match(target, params):  # a concurrent writer finished first: fine
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
