"""Procedural white-blood-cell images: five classes in three imaging modalities, nothing shipped.

Why procedural: the default search must run anywhere with nothing downloaded, yet the task has to
reward a model for looking at the right pixels. Each image holds one leukocyte drawn from
signed-distance shapes (a wobbly elliptic cell body; a nucleus made of up to five round lobes joined
by thin strands, with an optional kidney notch) and granule textures (smoothed noise, thresholded),
placed off-centre on a frame it covers only a minority of, among nuisances: size, shape, rotation
and position jitter, stain variation, an illumination gradient, blur, noise, debris specks and
fragments of neighbouring cells cut by the border.

Classes (what tells them apart at full strength):

- ``neutrophil``: 3-5 small lobes in an arc joined by thin strands, pale lilac cytoplasm.
- ``lymphocyte``: small cell, large round dense nucleus, thin blue cytoplasm rim.
- ``monocyte``: large cell, kidney-shaped (notched) pale nucleus, wide grey-blue cytoplasm.
- ``eosinophil``: two lobes, coarse orange-red granules in the cytoplasm.
- ``basophil``: dense dark purple granules over the whole cell, nucleus included.

Difficulty: every image has a cue strength ``t`` in [0, 1]. All class-specific features are
interpolated from one generic cell (round nucleus, no granules, medium size) at ``t = 0`` to the
class's own look at ``t = 1``, so images with small ``t`` are genuinely ambiguous and cap the
reachable accuracy. ``difficulty`` moves ``t`` down (``t = 1 - 2 * difficulty * u``, ``u`` uniform,
clipped at 0) and turns the nuisances up. The random draws do not depend on ``difficulty`` or on
the modality: one seed gives the same cells at every difficulty and in every modality.

Modalities (see :data:`MODALITY_CHANNELS`):

- ``brightfield``: 3 channels, RGB transmitted light in [0, 1] by Beer-Lambert absorbance of
  stain-like dyes (purple nucleus, pink red cells, orange eosinophil granules).
- ``opd``: 1 channel, optical path difference in radians (quantitative phase imaging): a smooth
  thickness map (the cytoplasm's dry mass differs by class), nucleus and granules thicker,
  background near 0 with a phase tilt. Not clipped: 98% of values lie in about [-0.3, 2.8].
- ``event``: 2 channels, ON and OFF event counts of an event camera while the scene moves 1-2
  pixels between two frames: only edges fire, plus sparse background-activity noise. Non-negative
  integers stored as float; about 93% of the values are 0 at the default difficulty.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SYNTHETIC_CLASSES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
MODALITY_CHANNELS: dict[str, int] = {"brightfield": 3, "opd": 1, "event": 2}
SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_CHUNK = 500  # images rendered at once up to 128 px (see chunk_size); chunks have their own seeded streams
_MAX_LOBES = 5
_EDGE_PX = 0.45  # width of the soft (anti-aliased) edge of every shape, in pixels

# Per-class morphology at full cue strength (t = 1); index order = SYNTHETIC_CLASSES, last row = the
# generic cell every class turns into at t = 0. Columns: cell radius (fraction of the frame side),
# lobe radius and arc radius (fractions of the cell radius), arc spread (radians, whole chain),
# notch depth (fraction of the lobe radius), nucleus stain density, cytoplasm dry-mass density
# (what a phase image sees instead of the stain's colour).
_MORPH = torch.tensor(
    [
        # radius lobe_r arc_r spread notch density dry_mass
        [0.250, 0.21, 0.50, 3.00, 0.00, 1.15, 0.85],  # neutrophil
        [0.190, 0.84, 0.00, 0.00, 0.00, 1.35, 1.20],  # lymphocyte
        [0.300, 0.60, 0.00, 0.00, 0.55, 0.85, 0.55],  # monocyte
        [0.260, 0.31, 0.60, 1.25, 0.00, 1.00, 1.00],  # eosinophil
        [0.225, 0.38, 0.45, 1.60, 0.00, 1.00, 0.70],  # basophil
        [0.240, 0.58, 0.00, 0.00, 0.00, 1.05, 0.80],  # generic
    ]
)
# Lobe count range per class (inclusive); spread 0 collapses any count into one round nucleus.
_LOBES = torch.tensor([[3, 5], [1, 1], [1, 1], [2, 2], [2, 3], [1, 1]])
# Granule amounts at t = 1: (fine lilac, coarse eosinophilic, dense basophilic).
_GRANULES = torch.tensor(
    [[0.5, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]], dtype=torch.float32
)

# Absorbance (optical density) per unit of dye, RGB: transmitted light = illumination * exp(-OD).
_CYTO_OD = torch.tensor(
    [
        [0.08, 0.16, 0.08],  # neutrophil: pale lilac
        [0.32, 0.15, 0.03],  # lymphocyte: blue
        [0.20, 0.17, 0.07],  # monocyte: grey-blue
        [0.05, 0.10, 0.08],  # eosinophil
        [0.12, 0.14, 0.06],  # basophil
        [0.15, 0.14, 0.07],  # generic
    ]
)
_NUCLEUS_OD = torch.tensor([0.55, 0.85, 0.30])  # purple
_FINE_OD = torch.tensor([0.10, 0.22, 0.10])  # faint lilac neutrophil granules
_EOS_OD = torch.tensor([0.05, 0.60, 0.70])  # orange-red
_BASO_OD = torch.tensor([0.90, 1.30, 0.50])  # dark purple
_RBC_OD = torch.tensor([0.06, 0.40, 0.30])  # pink
_DEBRIS_OD = torch.tensor([0.70, 0.80, 0.60])  # grey-brown
_BACKGROUND = torch.tensor([0.96, 0.94, 0.93])
_GRAY = torch.tensor([0.30, 0.59, 0.11])  # luminance weights: the event sensor sees gray light


@dataclass
class SyntheticBatch:
    """Rendered images with their labels and where the cell is (for tests and selection reports)."""

    images: Tensor  # (N, C, S, S) float32
    labels: Tensor  # (N,) int64, indices into the ``classes`` passed to generate()
    cell_mask: Tensor  # (N, S, S) float32 in [0, 1]: the labelled cell's body (neighbours excluded)
    boxes: Tensor | None = None  # (N, 3) fields only: the target's centre x, y and radius in pixels


def generate(
    n: int,
    *,
    modality: str = "brightfield",
    image_size: int = 32,
    difficulty: float = 0.5,
    seed: int = 0,
    split: str = "train",
    classes: tuple[str, ...] = SYNTHETIC_CLASSES,
    cue_scale: float | None = None,
) -> SyntheticBatch:
    """Render ``n`` class-balanced images (counts differ by at most one), deterministic per arguments.

    ``split`` picks an independent random stream, so the validation set does not change when the
    training set grows. ``classes`` selects (and orders) a subset of :data:`SYNTHETIC_CLASSES`;
    labels index into it. ``cue_scale`` is the width, in pixels, of the finest textures (granules,
    chromatin, debris specks, defocus) relative to their look at 32 px: None scales them with the
    frame (``image_size / 32``: a 64-px frame holds a 32-px frame's detail, twice as wide), a number
    fixes them in pixels (1.0: granules of 1-2 px at every frame size, so a larger frame holds finer
    detail than its shrink). Arguments are assumed valid (``load_dataset`` checks them).
    """
    class_ids = torch.tensor([SYNTHETIC_CLASSES.index(c) for c in classes])
    chunk = chunk_size(image_size)
    with _single_thread():
        parts = [
            _render_chunk(start, min(chunk, n - start), chunk, class_ids, modality, image_size, difficulty, seed, split,
                          image_size / 32.0 if cue_scale is None else float(cue_scale))
            for start in range(0, n, chunk)
        ]
    if not parts:
        c = MODALITY_CHANNELS[modality]
        empty = torch.zeros(0, image_size, image_size)
        return SyntheticBatch(empty[:, None].expand(0, c, -1, -1).clone(), torch.zeros(0, dtype=torch.int64), empty)
    return SyntheticBatch(*(torch.cat(p) for p in zip(*parts, strict=True)))


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Render on one intra-op thread: the chunks are small elementwise work that threads barely speed
    up, while on a shared CPU their spin-waiting costs up to 10x the CPU time (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stream(seed: int, split: str, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, SPLIT_STREAMS[split], chunk]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def chunk_size(size: int) -> int:
    """Images rendered at once: ``_CHUNK`` up to 128 px (so those frames keep their random streams), then
    as many as hold the same number of pixels, so a chunk of 512-px frames takes no more memory."""
    return _CHUNK if size <= 128 else max(1, _CHUNK * 128 * 128 // (size * size))


def _render_chunk(
    start: int, n: int, chunk: int, class_ids: Tensor, modality: str, size: int, difficulty: float, seed: int,
    split: str, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk's images; ``scale`` multiplies every texture and blur width (tuned at 32 px)."""
    g = _stream(seed, split, start // chunk)
    d = float(difficulty)

    # Labels: global index i gets class i % K (balanced), shuffled within the chunk.
    local = (torch.arange(start, start + n) % len(class_ids))[torch.randperm(n, generator=g)]
    cls = class_ids[local]  # (N,) rows of the class tables

    # Cue strength: 1 = the class's own look, 0 = the generic cell shared by all classes.
    t = (1 - 2 * d * torch.rand(n, 1, generator=g)).clamp(0, 1)  # (N, 1)
    morph = _MORPH[-1] + (_MORPH[cls] - _MORPH[-1]) * t  # (N, 7)
    granules = _GRANULES[cls] * t  # (N, 3)
    cyto_od = _CYTO_OD[-1] + (_CYTO_OD[cls] - _CYTO_OD[-1]) * t  # (N, 3)

    body = _cell_body(morph[:, 0], size, d, g)
    nucleus = _nucleus(body, cls, morph, t, g)
    noise = _white(g, n, 2, size, size)
    gran_field = _blur(noise[:, 0], 0.75 * scale, standardise=True)
    chromatin = _blur(noise[:, 1], 1.0 * scale, standardise=True)
    fine = torch.sigmoid((gran_field - 0.9) / 0.3) * body.mask * (1 - nucleus)
    eos = torch.sigmoid((gran_field - 0.35) / 0.25) * body.mask * (1 - 0.7 * nucleus)
    baso = torch.sigmoid((gran_field + 0.1) / 0.25) * body.mask
    debris = _debris(n, size, d, scale, g)
    rbc, rbc_thickness, other_nucleus = _neighbours(n, size, d, g, thickness=modality == "opd")

    scene = _Scene(body.mask, body.dome, nucleus, morph[:, 5], morph[:, 6], chromatin, granules, fine, eos, baso,
                   cyto_od, rbc, rbc_thickness, other_nucleus, debris)
    render = {"brightfield": _brightfield, "opd": _opd, "event": _event}[modality]
    return render(scene, g, d, scale).contiguous(), local, body.mask


@dataclass
class _Body:
    u: Tensor  # (N, S, S) cell-frame coordinates in units of the cell radius
    v: Tensor
    radius_px: Tensor  # (N, 1, 1)
    rho: Tensor  # (N, S, S) elliptic radius
    outline: Tensor  # (N, S, S) the outline's radius in the direction of each pixel
    mask: Tensor  # (N, S, S) soft inside mask
    dome: Tensor  # (N, S, S) thickness profile, 1 at the centre


def _cell_body(radius_frac: Tensor, size: int, d: float, g: torch.Generator) -> _Body:
    """The cell's place, size, rotation and outline (an ellipse with a low-order wobble)."""
    n = len(radius_frac)
    radius = radius_frac * size * (1 + (0.08 + 0.10 * d) * (2 * torch.rand(n, generator=g) - 1))
    centre = size / 2 + (2 * torch.rand(n, 2, generator=g) - 1) * size * (0.06 + 0.08 * d)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    aspect = (1 + (0.05 + 0.10 * d) * torch.rand(n, generator=g))[:, None, None]
    wobble_amp = (0.02 + 0.04 * d) * torch.rand(n, 2, generator=g)
    wobble_phase = torch.rand(n, 2, generator=g) * 2 * math.pi

    pix = torch.arange(size, dtype=torch.float32) + 0.5
    dy = pix[None, :, None] - centre[:, 1, None, None]  # (N, S, 1)
    dx = pix[None, None, :] - centre[:, 0, None, None]  # (N, 1, S)
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    r_px = radius[:, None, None]
    u = (dx * cos + dy * sin) / r_px  # (N, S, S)
    v = (dy * cos - dx * sin) / r_px
    rho = torch.sqrt(torch.square(u / aspect) + torch.square(v * aspect))
    theta = torch.atan2(v, u)
    outline = 1 + wobble_amp[:, 0, None, None] * torch.cos(2 * theta + wobble_phase[:, 0, None, None])
    outline = outline + wobble_amp[:, 1, None, None] * torch.cos(3 * theta + wobble_phase[:, 1, None, None])
    mask = _soft(rho - outline, r_px)
    dome = mask * (1 - torch.square((rho / outline).clamp(max=1))).sqrt()
    return _Body(u, v, r_px, rho, outline, mask, dome)


def _nucleus(body: _Body, cls: Tensor, morph: Tensor, t: Tensor, g: torch.Generator) -> Tensor:
    """Soft nucleus mask (N, S, S): lobes along an arc joined by strands, minus an optional notch."""
    n = len(cls)
    rand = functools.partial(torch.rand, generator=g)
    lobe_lo, lobe_hi = _LOBES[cls, 0], _LOBES[cls, 1]
    n_lobes = torch.minimum(lobe_lo + (rand(n) * (lobe_hi - lobe_lo + 1)).long(), lobe_hi)
    offset = (2 * rand(n, 2) - 1) * 0.12
    lobe_r = morph[:, 1, None] * (1 + 0.12 * (2 * rand(n, _MAX_LOBES) - 1))  # (N, L)
    arc_r, spread = morph[:, 2, None], morph[:, 3, None]
    slot = torch.arange(_MAX_LOBES, dtype=torch.float32)[None] - (n_lobes[:, None] - 1) / 2
    alpha = slot * spread / (n_lobes[:, None] - 1).clamp(min=1)
    alpha = alpha + 0.15 * (2 * rand(n, _MAX_LOBES) - 1) * (spread > 0)
    lobe_x = offset[:, :1] + arc_r * alpha.sin()
    lobe_y = offset[:, 1:] + arc_r * (0.5 - alpha.cos())  # the arc's middle sits near the offset
    strand = (0.05 + 0.03 * rand(n)) * (1 - 0.5 * t[:, 0])  # thin at full cue strength
    sdf = _lobe_chain_sdf(body.u, body.v, lobe_x, lobe_y, lobe_r, strand, n_lobes)

    # Kidney notch: a disc cut from the nucleus edge; at depth 0 it would only touch, so skip it.
    notch_dir = rand(n) * 2 * math.pi
    notch_r = morph[:, 1] * 0.6
    notch_dist = morph[:, 1] + notch_r * (1 - 2 * morph[:, 4])
    nx = (offset[:, 0] + notch_dist * notch_dir.cos())[:, None, None]
    ny = (offset[:, 1] + notch_dist * notch_dir.sin())[:, None, None]
    notched = morph[:, 4] > 0
    if notched.any():
        i = notched.nonzero()[:, 0]
        notch_sdf = torch.sqrt(torch.square(body.u[i] - nx[i]) + torch.square(body.v[i] - ny[i])) - notch_r[i, None, None]
        sdf[i] = torch.maximum(sdf[i], -notch_sdf)
    return _soft(sdf, body.radius_px) * _soft(body.rho - 0.92 * body.outline, body.radius_px)  # inside the cell


def _debris(n: int, size: int, d: float, scale: float, g: torch.Generator) -> Tensor:
    """Small dark specks (N, S, S) in [0, 1] scattered over part of the images."""
    rate = (0.001 + 0.002 * d) / scale**2 * (torch.rand(n, generator=g) < 0.3 + 0.6 * d)  # ~1-3 per image
    specks = (torch.rand(n, size, size, generator=g) < rate[:, None, None]).float()
    sigma = 0.6 * scale
    return (_blur(specks, sigma) * (2 * math.pi * sigma**2)).clamp(max=1)


def _neighbours(n: int, size: int, d: float, g: torch.Generator, *, thickness: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Up to two neighbouring cells cut by the border: red cells (pink, pale centre) or another
    leukocyte's edge (its nucleus showing). Returns red-cell density, red-cell thickness (only when
    ``thickness``, else zeros) and foreign nucleus density, each (N, S, S)."""
    rbc, rbc_thick, nucleus = (torch.zeros(n, size, size) for _ in range(3))
    pix = torch.arange(size, dtype=torch.float32) + 0.5
    for _ in range(2):
        present = torch.rand(n, generator=g) < 0.25 + 0.5 * d
        is_wbc = torch.rand(n, generator=g) < 0.25
        radius = (0.22 + 0.14 * torch.rand(n, generator=g)) * size
        heading = torch.rand(n, generator=g) * 2 * math.pi
        reach = torch.rand(n, 3, generator=g)
        dist = size * (0.45 + 0.1 * reach[:, 0]) + radius * (0.9 + 0.3 * reach[:, 1]) * (1 - 0.6 * d * reach[:, 2])
        i = present.nonzero()[:, 0]  # render only where present
        if len(i) == 0:
            continue
        fx = (size / 2 + dist[i] * heading[i].cos())[:, None, None]
        fy = (size / 2 + dist[i] * heading[i].sin())[:, None, None]
        r = radius[i, None, None]
        rel = torch.sqrt(torch.square(pix[None, None, :] - fx) + torch.square(pix[None, :, None] - fy)) / r
        inside = _soft(rel - 1, r)
        wbc = is_wbc[i, None, None]
        red = inside * ~wbc
        rbc[i] += red * (1 - 0.45 * torch.exp(-torch.square(rel / 0.45)))
        if thickness:  # biconcave: thick rim, thin centre
            rbc_thick[i] += red * (0.45 + 0.55 * torch.exp(-torch.square((rel - 0.7) / 0.25)))
        nucleus[i] += inside * wbc * _soft(rel - 0.6, r)
    return rbc, rbc_thick, nucleus


@dataclass
class _Scene:
    cell: Tensor  # (N, S, S) soft masks and thickness profiles
    dome: Tensor
    nucleus: Tensor
    density: Tensor  # (N,) nucleus stain density
    dry_mass: Tensor  # (N,) cytoplasm dry-mass density
    chromatin: Tensor  # (N, S, S) standard normal texture
    granules: Tensor  # (N, 3) amounts: fine, eosinophilic, basophilic
    fine: Tensor
    eos: Tensor
    baso: Tensor
    cyto_od: Tensor  # (N, 3)
    rbc: Tensor
    rbc_thick: Tensor
    other_nucleus: Tensor
    debris: Tensor

    def absorbance(self, project: Tensor | None = None) -> Tensor:
        """Optical density per channel (N, 3, S, S), or (N, 1, S, S) seen through ``project``."""

        def od(vec: Tensor) -> Tensor:
            vec = vec if project is None else (vec * project).sum(-1, keepdim=True)
            return vec[..., :, None, None]

        nuc = self.nucleus * self.density[:, None, None] * (1 + 0.2 * self.chromatin)
        total = self.cell[:, None] * od(self.cyto_od)
        total = total + nuc[:, None] * od(_NUCLEUS_OD)
        total = total + (self.fine * self.granules[:, 0, None, None])[:, None] * od(_FINE_OD)
        total = total + (self.eos * self.granules[:, 1, None, None])[:, None] * od(_EOS_OD)
        total = total + (self.baso * self.granules[:, 2, None, None])[:, None] * od(_BASO_OD)
        total = total + self.rbc[:, None] * od(_RBC_OD) + self.other_nucleus[:, None] * od(_NUCLEUS_OD)
        return total + self.debris[:, None] * od(_DEBRIS_OD)


def _brightfield(scene: _Scene, g: torch.Generator, d: float, scale: float) -> Tensor:
    return transmit(scene.absorbance(), g, d, scale)


def transmit(absorbance: Tensor, g: torch.Generator, d: float, scale: float) -> Tensor:
    """Brightfield exposure of an absorbance map (N, 3, S, S): stain and light variation, an illumination
    ramp, defocus, sensor noise; (N, 3, S, S) in [0, 1]."""
    n, size = absorbance.shape[0], absorbance.shape[-1]
    stain = torch.exp((0.05 + 0.10 * d) * torch.randn(n, 3, generator=g)) * (0.9 + 0.2 * torch.rand(n, 1, generator=g))
    light = _BACKGROUND * (0.90 + 0.08 * torch.rand(n, 1, generator=g))  # (N, 3)
    image = light[:, :, None, None] * torch.exp(-absorbance * stain[:, :, None, None])
    image = image * _gradient(n, size, (0.05 + 0.25 * d), g)[:, None]
    image = _random_blur(image, g, d, scale)
    sigma = 0.004 + (0.01 + 0.03 * d) * torch.rand(n, 1, 1, 1, generator=g)
    return (image + sigma * _white(g, *image.shape)).clamp(0, 1)


def _opd(scene: _Scene, g: torch.Generator, d: float, scale: float) -> Tensor:
    n, size = scene.cell.shape[0], scene.cell.shape[-1]
    thickness = 0.8 * scene.dry_mass[:, None, None] * (0.85 + 0.3 * torch.rand(n, 1, 1, generator=g))
    phase = thickness * scene.dome
    phase = phase + 1.8 * scene.nucleus * scene.density[:, None, None] * (1 + 0.15 * scene.chromatin)
    phase = phase + 1.3 * scene.eos * scene.granules[:, 1, None, None] + 1.2 * scene.baso * scene.granules[:, 2, None, None]
    phase = phase + 0.4 * scene.fine * scene.granules[:, 0, None, None]
    phase = phase + 1.1 * scene.rbc_thick + 1.0 * scene.other_nucleus + 0.7 * scene.debris
    tilt = _gradient(n, size, 0.2 + 0.6 * d, g) - 1  # residual phase ramp after background removal
    phase = phase + tilt + 0.1 * torch.randn(n, 1, 1, generator=g)
    phase = _blur(phase[:, None], 0.35 * scale)  # the objective's resolution limit
    phase = _random_blur(phase, g, d, scale)
    sigma = 0.02 + 0.06 * d * torch.rand(n, 1, 1, 1, generator=g)
    return phase + sigma * _white(g, *phase.shape)


def _event(scene: _Scene, g: torch.Generator, d: float, scale: float) -> Tensor:
    n, size = scene.cell.shape[0], scene.cell.shape[-1]
    stain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    first = _random_blur(scene.absorbance(_GRAY) * stain, g, d, scale)  # (N, 1, S, S)
    speed = (1.5 + 1.0 * torch.rand(n, generator=g)) * scale  # pixels moved between the frames
    heading = torch.rand(n, generator=g) * 2 * math.pi
    shift = torch.stack([speed * heading.cos(), speed * heading.sin()], 1) * 2 / size  # normalised units
    affine = torch.zeros(n, 2, 3)
    affine[:, 0, 0] = affine[:, 1, 1] = 1
    affine[:, :, 2] = -shift
    grid = F.affine_grid(affine, [n, 1, size, size], align_corners=False)
    second = F.grid_sample(first, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Log intensity = log(light) - OD: the light cancels, the change in OD fires events.
    change = first - second  # (N, 1, S, S) = log I2 - log I1
    threshold = 0.12 * (1 + 0.1 * torch.randn(1, 1, size, size, generator=g)).clamp(min=0.5)  # pixel mismatch
    counts = torch.cat([(change / threshold).clamp(min=0).floor(), (-change / threshold).clamp(min=0).floor()], 1)
    rate = 0.002 + 0.01 * d  # background activity: spurious single events
    spurious = torch.rand(n, 2, size, size, generator=g) < rate
    return counts + spurious.float()


def _soft(sdf: Tensor, radius_px: Tensor) -> Tensor:
    """Anti-aliased inside mask of a signed distance given in units of ``radius_px`` pixels."""
    return torch.sigmoid(-sdf * radius_px / _EDGE_PX)


def _lobe_chain_sdf(u: Tensor, v: Tensor, lx: Tensor, ly: Tensor, lr: Tensor, strand: Tensor, n_lobes: Tensor) -> Tensor:
    """Signed distance to the union of the first ``n_lobes`` lobes (discs) and the strands (capsules)
    joining neighbours; images are grouped by lobe count so no work goes to unused lobes."""
    out = torch.empty_like(u)
    for count in n_lobes.unique().tolist():
        i = (n_lobes == count).nonzero()[:, 0]
        du = u[i, None] - lx[i, :count, None, None]  # (M, L, S, S)
        dv = v[i, None] - ly[i, :count, None, None]
        sdf = (torch.sqrt(torch.square(du) + torch.square(dv)) - lr[i, :count, None, None]).amin(1)
        if count > 1:
            ax, ay = du[:, :-1], dv[:, :-1]  # pixel relative to each segment's start
            bx = (lx[i, 1:count] - lx[i, : count - 1])[:, :, None, None]
            by = (ly[i, 1:count] - ly[i, : count - 1])[:, :, None, None]
            h = ((ax * bx + ay * by) / (bx * bx + by * by).clamp(min=1e-6)).clamp(0, 1)
            strands = torch.sqrt(torch.square(ax - h * bx) + torch.square(ay - h * by)) - strand[i, None, None, None]
            sdf = torch.minimum(sdf, strands.amin(1))
        out[i] = sdf
    return out


@functools.lru_cache(maxsize=32)
def _blur_matrix(sigma: float, size: int) -> Tensor:
    """(S, S) matrix M with x @ M = x blurred along its last axis (Gaussian, reflected border)."""
    half = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    m = torch.zeros(size, size, dtype=torch.float64)
    for offset, w in zip(taps.long().tolist(), kernel.tolist(), strict=True):
        for j in range(size):
            i = j + offset
            i = -i if i < 0 else (2 * (size - 1) - i if i >= size else i)  # reflect (no edge repeat)
            m[min(max(i, 0), size - 1), j] += w
    return m.float()


def _blur(x: Tensor, sigma: float, *, standardise: bool = False) -> Tensor:
    """Separable Gaussian blur of (..., S, S) as two small matmuls (far faster than conv2d on CPU).

    ``standardise`` rescales blurred unit white noise back to unit variance (exact away from the
    border), so thresholds on texture fields mean the same at every image size."""
    m = _blur_matrix(round(sigma, 4), x.shape[-1])
    out = m.T @ (x @ m)
    if standardise:
        out = out / float(torch.square(m[:, m.shape[1] // 2]).sum())  # std of blurred noise = sum(k^2)
    return out


def _random_blur(x: Tensor, g: torch.Generator, d: float, scale: float) -> Tensor:
    """Defocus of per-image strength: a mix of the sharp and a blurred image."""
    weight = (d * torch.rand(x.shape[0], 1, 1, 1, generator=g)).clamp(max=1)
    return x + weight * (_blur(x, 0.9 * scale) - x)


def _gradient(n: int, size: int, amplitude: float, g: torch.Generator) -> Tensor:
    """Multiplicative illumination ramp (N, S, S) around 1, random direction and strength."""
    heading = torch.rand(n, generator=g) * 2 * math.pi
    amp = amplitude * torch.rand(n, generator=g)
    pix = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    ramp = heading.cos()[:, None, None] * pix[None, None, :] + heading.sin()[:, None, None] * pix[None, :, None]
    return 1 + amp[:, None, None] * ramp


def _white(g: torch.Generator, *shape: int) -> Tensor:
    """Zero-mean, unit-variance white noise; uniform, as torch draws it ~2x faster than normal."""
    return (torch.rand(shape, generator=g) - 0.5) * math.sqrt(12)
