"""The BSDS500 boundary benchmark on one image's maps: thresholds, thinning, matching, ODS/OIS/AP.

scipy and scikit-image (the ``eval`` extra) do the bipartite matching and the thinning; they are
imported when used.

How it differs from the reference MATLAB/C++ code (``boundaryBench``):

* Same: thresholds ``linspace(1/(K+1), 1 - 1/(K+1), K)`` (K = 99), ``pb >= t``, thinning of each
  thresholded map to one-pixel lines, matching tolerance ``0.0075 * image diagonal`` (pixels at
  Euclidean distance <= tolerance may match), one-to-one matching against each annotator separately,
  recall counts summed over annotators, a predicted pixel counted correct if it matches any annotator,
  ODS from the dataset-summed counts with the reference's linear interpolation between thresholds,
  OIS from each image's best threshold (last of ties), and AP computed exactly as the reference's
  ``collect_eval_bdry.m`` (see :func:`boundary_scores`).
* Different: the reference matches pixels with a min-cost assignment (CSA) whose outlier cost is 100x
  the tolerance, so it first maximises the number of matched pairs and then minimises their total
  distance. Here a maximum-cardinality bipartite matching (a unit-capacity maximum flow, scipy's
  Dinic) is used: the number of matches per annotator is the same, but when several maximum
  matchings exist the *which* pixels may differ, which can change the any-annotator precision count slightly. Thinning is
  scikit-image's ``thin``, the algorithm of MATLAB's ``bwmorph(..., 'thin', inf)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...errors import InvalidInputError
from .common import require_optional


def boundary_thresholds(thresholds: int | Sequence[float] = 99) -> np.ndarray:
    """``K`` thresholds as the BSDS benchmark spaces them, ``linspace(1/(K+1), 1 - 1/(K+1), K)``, or the
    given sequence sorted ascending."""
    if isinstance(thresholds, (int, np.integer)):
        if thresholds < 1:
            raise InvalidInputError(f"number of thresholds must be >= 1; got {thresholds}.")
        k = int(thresholds)
        return np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)
    t = np.sort(np.asarray(thresholds, np.float64).ravel())
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise InvalidInputError("thresholds must be a positive count or a non-empty list of finite numbers.")
    return t


def thin_boundaries(mask) -> np.ndarray:
    """Thin a binary map to one-pixel-wide lines: scikit-image's ``thin`` (Guo-Hall's two-subiteration
    thinning repeated until nothing changes), the algorithm of MATLAB's ``bwmorph(bw, 'thin', inf)``,
    which the BSDS benchmark applies to each thresholded prediction."""
    morphology = require_optional("skimage.morphology", "Thinning boundary maps")
    img = np.asarray(mask).astype(bool)
    if img.ndim != 2:
        raise InvalidInputError(f"thinning expects a 2-D map; got shape {img.shape}.")
    return morphology.thin(img)


def _candidate_pairs(
    gt: np.ndarray, max_dist_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a ground-truth map: every (image position, ground-truth pixel) pair within the tolerance.

    Returns (flat positions, ground-truth pixel index per pair, gt rows, gt cols). Computed once per
    annotator, so each threshold only has to look up which of these positions are predicted.
    """
    h, w = gt.shape
    gy, gx = np.nonzero(gt)
    radius = int(math.floor(max_dist_px))
    positions, owners = [], []
    index = np.arange(gy.size)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > max_dist_px * max_dist_px:
                continue
            py, px = gy + dy, gx + dx
            inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
            positions.append(py[inside] * w + px[inside])
            owners.append(index[inside])
    return np.concatenate(positions), np.concatenate(owners), gy, gx


def maximum_matching(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A maximum-cardinality matching of the bipartite graph whose edges are ``(rows[k], cols[k])``
    (no duplicates): the matched ``(rows, cols)``.

    Solved exactly as a unit-capacity maximum flow, source -> rows -> cols -> sink, with scipy's
    Dinic (``O(E sqrt(V))`` on such networks). Not ``maximum_bipartite_matching``: its
    Hopcroft-Karp search does not mark dead ends and takes exponential time on the layered graphs
    that dense boundary maps make (minutes to hours for one 400x600 map; scipy issue 26147).
    """
    csgraph = require_optional("scipy.sparse.csgraph", "BSDS boundary matching")
    sparse = require_optional("scipy.sparse", "BSDS boundary matching")
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if rows.size == 0:
        return rows, cols
    row_ids, row_of = np.unique(rows, return_inverse=True)
    col_ids, col_of = np.unique(cols, return_inverse=True)
    n_rows, n_cols = row_ids.size, col_ids.size
    source, sink = 0, n_rows + n_cols + 1
    row_node, col_node = 1 + np.arange(n_rows), 1 + n_rows + np.arange(n_cols)
    tails = np.concatenate([np.zeros(n_rows, np.int64), 1 + row_of, col_node])
    heads = np.concatenate([row_node, 1 + n_rows + col_of, np.full(n_cols, sink)])
    capacity = sparse.csr_matrix((np.ones(tails.size, np.int32), (tails, heads)), shape=(sink + 1, sink + 1))
    flow = csgraph.maximum_flow(capacity, source, sink, method="dinic").flow.tocoo()
    used = (flow.data > 0) & (flow.row >= 1) & (flow.row <= n_rows) & (flow.col > n_rows) & (flow.col < sink)
    return row_ids[flow.row[used] - 1], col_ids[flow.col[used] - 1 - n_rows]


def _match_candidates(pred: np.ndarray, candidates) -> tuple[np.ndarray, np.ndarray]:
    positions, owners, gy, gx = candidates
    matched_pred = np.zeros(pred.shape, bool)
    matched_gt = np.zeros(pred.shape, bool)
    hit = pred.ravel()[positions]
    if not hit.any():
        return matched_pred, matched_gt
    pred_positions, gt_index = maximum_matching(positions[hit], owners[hit])
    matched_pred.ravel()[pred_positions] = True
    matched_gt[gy[gt_index], gx[gt_index]] = True
    return matched_pred, matched_gt


def match_boundaries(pred, gt, max_dist_px: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to ground-truth boundary pixels within ``max_dist_px``.

    Returns boolean maps (matched predicted pixels, matched ground-truth pixels). A maximum-cardinality
    matching (:func:`maximum_matching`) over the pairs at Euclidean distance <= ``max_dist_px`` (only
    those are candidates, so the graph stays sparse); see the module docstring for how this relates
    to the benchmark's CSA assignment.
    """
    require_optional("scipy.sparse.csgraph", "BSDS boundary matching")
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InvalidInputError(
            f"boundary maps must be 2-D and the same size; got {pred.shape} and {gt.shape}."
        )
    return _match_candidates(pred, _candidate_pairs(gt, max_dist_px))


@dataclass
class BoundaryCounts:
    """Per-threshold counts for one image (the columns of the benchmark's ``_ev1.txt``)."""

    thresholds: np.ndarray
    cnt_r: np.ndarray  # matched ground-truth pixels, summed over annotators
    sum_r: np.ndarray  # ground-truth pixels, summed over annotators
    cnt_p: np.ndarray  # predicted pixels matched to at least one annotator
    sum_p: np.ndarray  # predicted pixels (after thinning)
    name: str = ""


def evaluate_boundary_image(
    prediction,
    ground_truths: Sequence,
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin: bool = True,
    name: str = "",
) -> BoundaryCounts:
    """Counts for one image. ``prediction``: 2-D edge strength in [0, 1] (higher = more boundary);
    ``ground_truths``: one boolean boundary map per annotator, same size; ``max_dist``: tolerance as
    a fraction of the image diagonal."""
    pb = np.asarray(prediction, np.float64)
    gts = [np.asarray(g).astype(bool) for g in ground_truths]
    if pb.ndim != 2:
        raise InvalidInputError(f"prediction {name!r} must be a 2-D map; got shape {pb.shape}.")
    if not gts:
        raise InvalidInputError(f"ground truth for {name!r} has no annotator maps.")
    for g in gts:
        if g.shape != pb.shape:
            raise InvalidInputError(
                f"{name!r}: prediction is {pb.shape} but a ground-truth map is {g.shape}; resize first."
            )
    t = boundary_thresholds(thresholds)
    h, w = pb.shape
    max_dist_px = max_dist * math.sqrt(h * h + w * w)
    sum_r_total = float(sum(int(g.sum()) for g in gts))
    candidates = [_candidate_pairs(g, max_dist_px) for g in gts]
    cnt_r, sum_r, cnt_p, sum_p = (np.zeros(t.size) for _ in range(4))
    previous_map, previous = None, None
    for i, threshold in enumerate(t):
        raw = pb >= threshold
        if previous_map is not None and np.array_equal(raw, previous_map):
            cnt_r[i], cnt_p[i], sum_p[i] = previous  # same map, same counts (e.g. binary predictions)
        else:
            bmap = thin_boundaries(raw) if thin else raw
            any_match = np.zeros_like(bmap)
            matched_gt = 0
            for cand in candidates:
                mp, mg = _match_candidates(bmap, cand)
                any_match |= mp
                matched_gt += int(mg.sum())
            cnt_r[i], cnt_p[i], sum_p[i] = matched_gt, int(any_match.sum()), int(bmap.sum())
            previous_map, previous = raw, (cnt_r[i], cnt_p[i], sum_p[i])
        sum_r[i] = sum_r_total
    return BoundaryCounts(t, cnt_r, sum_r, cnt_p, sum_p, name)


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return num / (den + (den == 0))


def _fmeasure(r, p):
    r, p = np.asarray(r, np.float64), np.asarray(p, np.float64)
    return 2 * p * r / (p + r + ((p + r) == 0))


def _max_f(t, r, p) -> tuple[float, float, float, float]:
    """The benchmark's ``maxF``: best F over the PR curve, interpolating linearly between neighbouring
    thresholds at 100 points (which include both ends)."""
    best = (float(t[0]), float(r[0]), float(p[0]), float(_fmeasure(r[0], p[0])))
    d = np.linspace(0, 1, 100)
    for i in range(1, len(t)):
        tt = t[i] * d + t[i - 1] * (1 - d)
        rr = r[i] * d + r[i - 1] * (1 - d)
        pp = p[i] * d + p[i - 1] * (1 - d)
        ff = _fmeasure(rr, pp)
        j = int(np.argmax(ff))  # first of ties, like the strict '>' scan of the reference
        if ff[j] > best[3]:
            best = (float(tt[j]), float(rr[j]), float(pp[j]), float(ff[j]))
    return best


@dataclass
class BoundaryScores:
    """ODS / OIS / AP and the dataset PR curve (one point per threshold)."""

    ods_f: float
    ods_p: float
    ods_r: float
    ods_threshold: float
    ois_f: float
    ois_p: float
    ois_r: float
    ap: float
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    per_image: list = field(default_factory=list)  # (name, best threshold, R, P, F) per image

    def summary(self) -> str:
        return (
            f"ODS F={self.ods_f:.4f} (P={self.ods_p:.4f}, R={self.ods_r:.4f}, t={self.ods_threshold:.3f})  "
            f"OIS F={self.ois_f:.4f} (P={self.ois_p:.4f}, R={self.ois_r:.4f})  AP={self.ap:.4f}  "
            f"images={len(self.per_image)}"
        )


def boundary_scores(per_image: Sequence[BoundaryCounts]) -> BoundaryScores:
    """ODS, OIS and AP as the benchmark's ``collect_eval_bdry.m`` computes them.

    ODS: best (interpolated) F of the counts summed over images. OIS: counts of each image at its own
    best threshold (the highest of ties), summed, then F. AP: the reference's area under the PR curve:
    recall values made unique (first occurrence), precision interpolated linearly at recall
    0, 0.01, ..., 1 (0 outside the measured recall range), summed and multiplied by 0.01. Two quirks of
    that definition are kept for comparability with published numbers: the 101-point sum can slightly
    exceed the true area, and a curve with a single recall value (e.g. a binary prediction) has AP 0.
    """
    if not per_image:
        raise InvalidInputError("no images to score; check that predictions and ground truths were paired.")
    t = per_image[0].thresholds
    for c in per_image:
        if not np.array_equal(c.thresholds, t):
            raise InvalidInputError("all images must be evaluated with the same thresholds.")
    total = [np.zeros(t.size) for _ in range(4)]
    best_counts = np.zeros(4)
    rows = []
    for c in per_image:
        counts = (c.cnt_r, c.sum_r, c.cnt_p, c.sum_p)
        for acc, v in zip(total, counts, strict=True):
            acc += v
        r, p = _ratio(c.cnt_r, c.sum_r), _ratio(c.cnt_p, c.sum_p)
        f = _fmeasure(r, p)
        last_best = len(f) - 1 - int(np.argmax(f[::-1]))
        best_counts += [v[last_best] for v in counts]
        rows.append((c.name, *_max_f(t, r, p)))
    recall, precision = _ratio(total[0], total[1]), _ratio(total[2], total[3])
    ods_t, ods_r, ods_p, ods_f = _max_f(t, recall, precision)
    ois_r = float(_ratio(best_counts[0], best_counts[1]))
    ois_p = float(_ratio(best_counts[2], best_counts[3]))
    ois_f = float(_fmeasure(ois_r, ois_p))
    unique_r, first = np.unique(recall, return_index=True)
    if unique_r.size > 1:
        grid = np.linspace(0, 1, 101)
        ap = float(np.interp(grid, unique_r, precision[first], left=0.0, right=0.0).sum() * 0.01)
    else:
        ap = 0.0
    return BoundaryScores(ods_f, ods_p, ods_r, ods_t, ois_f, ois_p, ois_r, ap, t, precision, recall, rows)
