"""Procedural smear fields: one small white cell that carries the class, at a random place in a large
frame among red cells, platelets and debris, with cues a fixed number of pixels wide.

Why: selection (``sparse_topk``, ``tnet_traversal``, ``span_pyramid``) can only beat a dense model on a
shrunk copy where the shrink loses the class. In :mod:`runner.data.synthetic` the cell fills a fifth
of the frame and its textures grow with the frame, so a smaller copy keeps everything. Here the target
is ``target_size`` pixels across whatever the frame (128-512 px), its granules and nucleus lobes are
``cue_scale`` pixels wide, and the classes are built so that what survives a 4x shrink (the cell's
size, its mean colour, its nucleus's area) says almost nothing:

- every class has the same cell size and cytoplasm colour;
- nucleus lobes are sized so that every class's nucleus covers about the same area (3-5 small lobes,
  two lobes, one round or one notched nucleus: the shape is the cue, not the amount of stain);
- granules differ in grain, not in colour or mean density: fine 1-px specks (neutrophil), coarse
  2-px granules (eosinophil), dense coarse granules over the nucleus too (basophil), or none, in which
  case the cytoplasm carries the same mean tint evenly (lymphocyte, monocyte).

Red cells (pink discs with a pale centre, about 0.8 of the target's diameter), platelets (purple
specks of 2-3 px) and debris (grey specks of 1-2 px) are spread over the frame; none covers the target's centre. Exposure,
stain variation, illumination ramp, defocus and noise are the single-cell generator's
(:func:`runner.data.synthetic.transmit`). Images are uint8 (N, 3, S, S), as a camera gives them:
a 512-px frame takes 0.75 MB, not 3 MB. ``cell_mask`` marks the target cell's body, ``boxes`` its
centre and radius (for selection benchmarks and the ground-truth crop ceiling).

Difficulty works as in the single-cell generator: a per-image cue strength ``t`` interpolates every
class-specific feature from one generic cell (t = 0) to the class's own look (t = 1).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .synthetic import (
    _NUCLEUS_OD,
    _RBC_OD,
    SYNTHETIC_CLASSES,
    SyntheticBatch,
    _Body,
    _cell_body,
    _lobe_chain_sdf,
    _single_thread,
    _soft,
    _stream,
    _white,
    transmit,
)
from .synthetic import _blur as blur

FIELD_MIN_SIZE, FIELD_MAX_SIZE, DEFAULT_FIELD_SIZE = 64, 512, 256
DEFAULT_TARGET_SIZE = 32  # pixels across the target cell: a white cell in a 40x smear field
DEFAULT_CUE_SCALE = 1.0  # granules of 1-2 px, lobes of about 4 px at the default target size
RBC_COVER = 0.12  # share of the frame red cells cover when ``distractors`` is not given
_CHUNK_PIXELS = 16 * 512 * 512  # frames rendered at once, by area: about 1 GB of intermediates

# Per-class look at t = 1, rows in SYNTHETIC_CLASSES order, last row the generic cell (t = 0).
# Columns: lobe radius and arc radius (fractions of the cell radius), arc spread (radians, whole
# chain), notch depth (fraction of the lobe radius). Lobe radii give every class about the same
# nucleus area (n * r^2 ~ 0.3), so a shrink that blurs the lobes away leaves no area cue.
_SHAPE = torch.tensor(
    [
        # lobe_r arc_r spread notch
        [0.27, 0.50, 3.00, 0.00],  # neutrophil: 3-5 small lobes in an arc
        [0.55, 0.00, 0.00, 0.00],  # lymphocyte: one round nucleus
        [0.62, 0.00, 0.00, 0.55],  # monocyte: one kidney-shaped (notched) nucleus
        [0.39, 0.55, 1.30, 0.00],  # eosinophil: two lobes
        [0.35, 0.45, 1.60, 0.00],  # basophil: two or three lobes under granules
        [0.50, 0.00, 0.00, 0.00],  # generic
    ]
)
_LOBES = torch.tensor([[3, 5], [1, 1], [1, 1], [2, 2], [2, 3], [1, 1]])
# Granule grain per class at t = 1: (fine, coarse, dense) weights; what is left of 1 is an even tint.
_GRAIN = torch.tensor(
    [[1.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]], dtype=torch.float32
)
_GRAIN_SIGMA = (0.5, 1.0, 1.0)  # texture widths of the three grains, times cue_scale
_GRAIN_EDGE = ((0.9, 0.3), (0.6, 0.25), (0.0, 0.25))  # sigmoid((z - a) / b) thresholds of each grain
_CYTO_OD = torch.tensor([0.15, 0.14, 0.07])  # every class's cytoplasm
_GRANULE_OD = torch.tensor([0.30, 0.40, 0.18])  # every grain's colour, at the mean density of one grain
_PLATELET_OD = 0.7 * _NUCLEUS_OD
_DEBRIS_OD = torch.tensor([0.70, 0.80, 0.60])
_NUCLEUS_DENSITY = 1.1


def generate_fields(
    n: int,
    *,
    image_size: int = DEFAULT_FIELD_SIZE,
    target_size: int = DEFAULT_TARGET_SIZE,
    distractors: int | None = None,
    cue_scale: float = DEFAULT_CUE_SCALE,
    difficulty: float = 0.3,
    seed: int = 0,
    split: str = "train",
    classes: tuple[str, ...] = SYNTHETIC_CLASSES,
) -> SyntheticBatch:
    """Render ``n`` class-balanced brightfield fields, deterministic per arguments.

    ``distractors`` is the number of red cells per frame (platelets are a third of it); None covers
    about :data:`RBC_COVER` of the frame with them. ``split`` picks an independent stream, as in
    :func:`runner.data.synthetic.generate`. Arguments are assumed valid (``load_dataset`` checks them).
    """
    class_ids = torch.tensor([SYNTHETIC_CLASSES.index(c) for c in classes])
    count = red_cell_count(image_size, target_size) if distractors is None else int(distractors)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
    with _single_thread():
        parts = [
            _render_chunk(start, min(chunk, n - start), chunk, class_ids, image_size, target_size, count,
                          float(cue_scale), float(difficulty), seed, split)
            for start in range(0, n, chunk)
        ]
    if not parts:
        empty = torch.zeros(0, image_size, image_size)
        return SyntheticBatch(torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8),
                              torch.zeros(0, dtype=torch.int64), empty, torch.zeros(0, 3))
    return SyntheticBatch(*(torch.cat(p) for p in zip(*parts, strict=True)))


def red_cell_count(image_size: int, target_size: int) -> int:
    """Red cells that cover about :data:`RBC_COVER` of a frame (their mean radius is 0.4 target)."""
    return round(RBC_COVER * image_size**2 / (math.pi * (0.4 * target_size) ** 2))


def _render_chunk(
    start: int, n: int, chunk: int, class_ids: Tensor, size: int, target: int, count: int, cue: float, d: float,
    seed: int, split: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _stream(seed, split, start // chunk)
    local = (torch.arange(start, start + n) % len(class_ids))[torch.randperm(n, generator=g)]
    cls = class_ids[local]
    t = (1 - 2 * d * torch.rand(n, 1, generator=g)).clamp(0, 1)  # (N, 1) cue strength

    # The target cell in a patch of side P around it, then its place in the frame.
    patch = int(math.ceil(1.25 * target)) + 2
    od_cell, mask_cell, radius = _target(cls, t, patch, target, cue, d, g)
    margin = patch / 2 + 1
    centre = margin + torch.rand(n, 2, generator=g) * (size - 2 * margin)  # (N, 2) x, y in pixels
    top_left = (centre - patch / 2).round().long()

    absorbance = torch.zeros(n, 3, size, size)
    _red_cells(absorbance, centre, radius, count, target, g)
    _specks(absorbance, count // 3, (0.8 * cue, 1.4 * cue), _PLATELET_OD, g)  # platelets, 2-3 px
    _specks(absorbance, round((0.5 + d) * size * size / 8000), (0.4 * cue, 0.9 * cue), _DEBRIS_OD, g)
    _paste(absorbance, od_cell[:, None], top_left[:, None])
    mask = torch.zeros(n, 1, size, size)
    _paste(mask, mask_cell[:, None, None], top_left[:, None])

    image = transmit(absorbance, g, d, cue)
    image = (image * 255).round_().to(torch.uint8)
    pix = torch.arange(patch, dtype=torch.float32) + 0.5
    weight = mask_cell.flatten(1).sum(1).clamp_min(1e-6)
    inside = torch.stack([(mask_cell * pix[None, None, :]).flatten(1).sum(1),  # the body's centroid in its patch
                          (mask_cell * pix[None, :, None]).flatten(1).sum(1)], 1) / weight[:, None]
    boxes = torch.cat([top_left.float() + inside, radius[:, None]], 1)  # (N, 3): x, y, radius in pixels
    return image, local, mask[:, 0], boxes


def _target(cls: Tensor, t: Tensor, patch: int, target: int, cue: float, d: float, g: torch.Generator
            ) -> tuple[Tensor, Tensor, Tensor]:
    """The target cell's absorbance (N, 3, P, P), body mask (N, P, P) and radius (N,) in its patch."""
    n = len(cls)
    radius_frac = torch.full((n,), 0.5 * target / patch)
    body = _cell_body(radius_frac, patch, 0.0, g)  # size jitter only: position varies in the frame
    shape = _SHAPE[-1] + (_SHAPE[cls] - _SHAPE[-1]) * t  # (N, 4)
    nucleus = _nucleus(body, cls, shape, t, g)
    noise = _white(g, n, 2, patch, patch)
    chromatin = blur(noise[:, 1], cue, standardise=True)
    cytoplasm = body.mask * (1 - nucleus)
    grains = []
    for k, (sigma, (a, b)) in enumerate(zip(_GRAIN_SIGMA, _GRAIN_EDGE, strict=True)):
        field = blur(noise[:, 0], sigma * cue, standardise=True)
        where = body.mask if k == 2 else cytoplasm  # dense (basophilic) granules cover the nucleus too
        grains.append(torch.sigmoid((field - a) / b) / _grain_mean(a, b) * where)  # mean 1 over ``where``
    grain = _GRAIN[cls] * t  # (N, 3) weights; the rest is an even tint of the same mean density
    texture = sum(grain[:, k, None, None] * grains[k] for k in range(3)) + (1 - grain.sum(1))[:, None, None] * cytoplasm
    od = body.mask[:, None] * _CYTO_OD[:, None, None]
    od = od + (nucleus * _NUCLEUS_DENSITY * (1 + 0.2 * chromatin))[:, None] * _NUCLEUS_OD[:, None, None]
    od = od + 0.5 * texture[:, None] * _GRANULE_OD[:, None, None]
    return od, body.mask, body.radius_px[:, 0, 0]


@functools.lru_cache(maxsize=8)
def _grain_mean(a: float, b: float) -> float:
    """E[sigmoid((z - a) / b)] for z ~ N(0, 1) (quadrature): grains of every grain share one mean density."""
    z = torch.linspace(-8, 8, 16001, dtype=torch.float64)
    weight = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return float((torch.sigmoid((z - a) / b) * weight).sum() * (z[1] - z[0]))


def _nucleus(body: _Body, cls: Tensor, shape: Tensor, t: Tensor, g: torch.Generator) -> Tensor:
    """Soft nucleus mask (N, P, P): lobes along an arc joined by strands, minus an optional notch."""
    n = len(cls)
    lobe_lo, lobe_hi = _LOBES[cls, 0], _LOBES[cls, 1]
    n_lobes = torch.minimum(lobe_lo + (torch.rand(n, generator=g) * (lobe_hi - lobe_lo + 1)).long(), lobe_hi)
    offset = (2 * torch.rand(n, 2, generator=g) - 1) * 0.10
    lobe_r = shape[:, 0, None] * (1 + 0.10 * (2 * torch.rand(n, 5, generator=g) - 1))
    arc_r, spread = shape[:, 1, None], shape[:, 2, None]
    slot = torch.arange(5, dtype=torch.float32)[None] - (n_lobes[:, None] - 1) / 2
    alpha = slot * spread / (n_lobes[:, None] - 1).clamp(min=1)
    lobe_x = offset[:, :1] + arc_r * alpha.sin()
    lobe_y = offset[:, 1:] + arc_r * (0.5 - alpha.cos())
    strand = 0.06 * (1 - 0.5 * t[:, 0])
    sdf = _lobe_chain_sdf(body.u, body.v, lobe_x, lobe_y, lobe_r, strand, n_lobes)
    notch_dir = torch.rand(n, generator=g) * 2 * math.pi
    notch_r = shape[:, 0] * 0.6
    notch_dist = shape[:, 0] + notch_r * (1 - 2 * shape[:, 3])
    nx = (offset[:, 0] + notch_dist * notch_dir.cos())[:, None, None]
    ny = (offset[:, 1] + notch_dist * notch_dir.sin())[:, None, None]
    notch_sdf = torch.sqrt(torch.square(body.u - nx) + torch.square(body.v - ny)) - notch_r[:, None, None]
    sdf = torch.where((shape[:, 3] > 0)[:, None, None], torch.maximum(sdf, -notch_sdf), sdf)
    return _soft(sdf, body.radius_px) * _soft(body.rho - 0.92 * body.outline, body.radius_px)


def _red_cells(absorbance: Tensor, centre: Tensor, radius: Tensor, count: int, target: int, g: torch.Generator) -> None:
    """Add ``count`` red cells per frame, pushed off the target so none hides its middle."""
    n, size = absorbance.shape[0], absorbance.shape[-1]
    if count == 0:
        return
    r = (0.36 + 0.08 * torch.rand(n, count, generator=g)) * target  # (N, M) radius in pixels
    pos = torch.rand(n, count, 2, generator=g) * size  # (N, M, 2)
    away = pos - centre[:, None]
    dist = away.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    nearest = (radius[:, None, None] + 0.5 * r[..., None])
    pos = torch.where(dist < nearest, centre[:, None] + away / dist * nearest, pos)
    rel, top_left = _disc_patches(pos, r)
    density = _soft(rel - 1, r[..., None, None]) * (1 - 0.45 * torch.exp(-torch.square(rel / 0.45)))
    _paste(absorbance, density[:, :, None] * _RBC_OD[:, None, None], top_left)


def _specks(absorbance: Tensor, count: int, radius: tuple[float, float], od: Tensor, g: torch.Generator) -> None:
    """Add ``count`` soft round specks per frame, radius uniform in ``radius`` pixels, of absorbance ``od``."""
    n, size = absorbance.shape[0], absorbance.shape[-1]
    if count == 0:
        return
    r = radius[0] + (radius[1] - radius[0]) * torch.rand(n, count, generator=g)
    rel, top_left = _disc_patches(torch.rand(n, count, 2, generator=g) * size, r)
    density = _soft(rel - 1, r[..., None, None])
    _paste(absorbance, density[:, :, None] * od[:, None, None], top_left)


def _disc_patches(pos: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """For discs at ``pos`` (N, M, 2) of ``radius`` (N, M) pixels: each patch pixel's distance from its
    disc's centre in radii (N, M, B, B), and where each patch goes in the frame (N, M, 2) as (x, y)."""
    side = int(math.ceil(2 * radius.max().item())) + 3
    top_left = (pos - side / 2).floor().long()
    pix = torch.arange(side, dtype=torch.float32) + 0.5
    fx = pos[..., 0, None, None] - top_left[..., 0, None, None]  # the centre inside its patch
    fy = pos[..., 1, None, None] - top_left[..., 1, None, None]
    rel = torch.sqrt(torch.square(pix[None, None, None, :] - fx) + torch.square(pix[None, None, :, None] - fy))
    return rel / radius[..., None, None], top_left


def _paste(frame: Tensor, patches: Tensor, top_left: Tensor) -> None:
    """Add patches (N, M, C, B, B) into frame (N, C, S, S) at top_left (N, M, 2) as (x, y); what falls
    outside the frame is dropped. One scatter-add for every patch of the chunk."""
    n, m, c, b, _ = patches.shape
    size = frame.shape[-1]
    offs = torch.arange(b)
    ys = top_left[..., 1, None] + offs  # (N, M, B)
    xs = top_left[..., 0, None] + offs
    inside = ((ys >= 0) & (ys < size))[..., :, None] & ((xs >= 0) & (xs < size))[..., None, :]  # (N, M, B, B)
    image = torch.arange(n)[:, None, None, None].expand(n, m, b, b)
    flat = (image * size + ys.clamp(0, size - 1)[..., :, None]) * size + xs.clamp(0, size - 1)[..., None, :]
    flat = flat[inside]  # (K,) pixel index into (N, S, S)
    view = frame.transpose(0, 1).reshape(c, -1)  # (C, N*S*S): a copy for C > 1, the frame itself for C = 1
    view.index_add_(1, flat, patches.permute(2, 0, 1, 3, 4)[:, inside])  # values (C, K)
    if view.data_ptr() != frame.data_ptr():
        frame.copy_(view.view(c, n, size, size).transpose(0, 1))
