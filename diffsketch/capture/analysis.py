"""Which denoising timesteps carry distinct features: the representative-timestep analysis.

DiffSketch feeds its generator the UNet decoder features of a few *representative* timesteps
(13 of the 50 DDIM steps in the paper, docs/method.md §2). The paper picks them by PCA and k-means
over features sampled at every step; the exact procedure is not published and the released code
has no k-means (docs/method.md §2). This module implements this procedure:

1. Sample N images and, at every timestep of the DDIM grid, reduce each captured decoder tap to
   a small fixed-size vector *inside the capture hook* (:class:`FeatureReducer`), so host memory
   does not grow with resolution and full feature maps are never stored.
2. Concatenate the per-layer vectors of one (image, timestep) and run PCA over all N*T points
   (:func:`analyse`).
3. Average the PCA coordinates over images: one point per timestep. The clustering is over
   *timesteps* (we want a set of timesteps, not of images), and averaging removes the
   image-to-image spread that would otherwise dominate the distances between timesteps.
4. k-means (k-means++ seeding, several seeded restarts) for k = 1..k_max; the elbow of the
   inertia curve gives k unless it is given.
5. For each cluster, the member timestep nearest to the cluster centre is its representative.

Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CaptureError, FileFormatError, InvalidInputError, TrainingInterrupted
from ..seeds import cpu_generator, seed_from_key
from .hooks import COND, UNCOND
from .sampling import SamplingSettings
from .timesteps import ddim_grid

ANALYSIS_KIND = "timestep_analysis"
ANALYSIS_VERSION = 1


# -- reduction at capture time ------------------------------------------------------------------
class FeatureReducer:
    """Maps one captured UNet tap to a fixed-size vector, as the capture hook fires.

    ``reducer(layer, tensor)``: ``tensor`` is ``[B, C, h, w]`` (or ``[C, h, w]``); the result is
    ``[B, dim]`` (or ``[dim]``), float32, on ``out_device`` (default: the input's device).

    Two steps, both independent of the resolution:

    - adaptive average pooling to a ``pool x pool`` grid keeps the coarse layout of the map;
    - a fixed Gaussian random projection ``C*pool*pool -> dim`` (Johnson-Lindenstrauss: squared
      distances are preserved in expectation), created lazily per (seed, layer, channels).

    With ``area_weight`` the pooled values are multiplied by ``sqrt(h*w / pool**2)``, so a
    layer's squared distances match those of the coarse content of its *full* flattened map.
    The released code ran its PCA on the raw flattened features, where large maps weigh more;
    this keeps that balance between layers instead of giving every layer the same weight.
    """

    def __init__(
        self,
        dim: int = 64,
        pool: int = 2,
        seed: int = 0,
        area_weight: bool = True,
        out_device: torch.device | str | None = None,
    ):
        if int(dim) < 1:
            raise InvalidInputError(f"FeatureReducer dim must be at least 1, got {dim}")
        if int(pool) < 1:
            raise InvalidInputError(f"FeatureReducer pool must be at least 1, got {pool}")
        self.dim = int(dim)
        self.pool = int(pool)
        self.seed = int(seed)
        self.area_weight = bool(area_weight)
        self.out_device = None if out_device is None else torch.device(out_device)
        self._projections: dict[tuple[int, int, str], torch.Tensor] = {}

    def config(self) -> dict:
        return {"dim": self.dim, "pool": self.pool, "seed": self.seed, "area_weight": self.area_weight}

    def _generator_seed(self, layer: int, channels: int) -> int:
        return seed_from_key(f"diffsketch-reducer:{self.seed}:{layer}:{channels}")

    def projection(self, layer: int, channels: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``[channels*pool*pool, dim]`` projection of ``layer`` (generated on the CPU, so
        the same seed gives the same matrix on every device)."""
        device = torch.device(device)
        key = (int(layer), int(channels), str(device))
        if key not in self._projections:
            cpu_key = (int(layer), int(channels), "cpu")
            if cpu_key not in self._projections:
                g = cpu_generator(self._generator_seed(layer, channels))
                n_in = channels * self.pool * self.pool
                self._projections[cpu_key] = torch.randn(n_in, self.dim, generator=g) / math.sqrt(self.dim)
            self._projections[key] = self._projections[cpu_key].to(device)
        return self._projections[key]

    @torch.no_grad()
    def __call__(self, layer: int, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (3, 4):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise InvalidInputError(
                f"FeatureReducer expects a [B, C, h, w] or [C, h, w] feature map, got {shape}"
            )
        single = tensor.ndim == 3
        x = tensor.unsqueeze(0) if single else tensor
        b, c, h, w = x.shape
        pooled = F.adaptive_avg_pool2d(x.detach().to(torch.float32), self.pool).reshape(b, -1)
        if self.area_weight:
            pooled = pooled * math.sqrt(h * w / (self.pool * self.pool))
        out = pooled @ self.projection(layer, c, pooled.device)
        if self.out_device is not None:
            out = out.to(self.out_device)
        return out[0] if single else out


# -- PCA and k-means ----------------------------------------------------------------------------
def pca(points: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact PCA of ``points`` [M, D] in float64.

    Returns (coordinates [M, n], components [n, D], explained variance ratio [n]) with
    ``n = min(n_components, M, D)``. It eigendecomposes the smaller of the covariance
    (D x D) and Gram (M x M) matrices: several times faster than an SVD of the data on a
    CPU, and float64 keeps the leading components accurate. Signs are fixed (the
    largest-magnitude loading of each component is positive), so the result does not depend on
    the eigensolver's sign choice.
    """
    x = points.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    m, d = x.shape
    n = min(int(n_components), m, d)
    total = (x**2).sum()
    if d <= m:
        evals, evecs = torch.linalg.eigh(x.T @ x)
        evals, vh = evals.flip(0)[:n], evecs.flip(1)[:, :n].T
    else:
        evals, evecs = torch.linalg.eigh(x @ x.T)
        evals, u = evals.flip(0)[:n], evecs.flip(1)[:, :n]
        # v_i = X^T u_i / s_i; a (numerically) zero-variance direction has no defined
        # component, so it gets a zero vector (its coordinates are all zero either way).
        scale = evals.clamp(min=0).sqrt()
        live = scale > scale.max().clamp(min=1e-300) * 1e-10
        vh = torch.zeros(n, d, dtype=torch.float64)
        vh[live] = (x.T @ u[:, live] / scale[live]).T
    evals = evals.clamp(min=0)
    flip = torch.sign(vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)))
    flip[flip == 0] = 1
    vh = vh * flip
    ratio = evals / total if total > 0 else torch.zeros(n, dtype=torch.float64)
    return x @ vh.T, vh, ratio


def _sq_dists(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = len(points)
    chosen = [int(rng.integers(n))]
    d2 = _sq_dists(points, points[chosen]).min(1)
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            idx = int(rng.choice(n, p=d2 / total))
        else:  # every point coincides with a centre: take any point not yet chosen
            rest = np.setdiff1d(np.arange(n), chosen)
            idx = int(rng.choice(rest))
        chosen.append(idx)
        d2 = np.minimum(d2, _sq_dists(points, points[idx : idx + 1])[:, 0])
    return points[chosen].copy()


def _lloyd(points: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    k = len(centres)
    labels = np.full(len(points), -1)
    for _ in range(max_iter):
        d2 = _sq_dists(points, centres)
        new = d2.argmin(1)
        # Keep every cluster non-empty: an empty one takes the point farthest from its centre
        # among clusters that can spare one.
        for j in range(k):
            if not (new == j).any():
                counts = np.bincount(new, minlength=k)
                own = d2[np.arange(len(points)), new]
                own[counts[new] <= 1] = -1.0
                far = int(own.argmax())
                new[far] = j
        if (new == labels).all():
            break
        labels = new
        centres = np.stack([points[labels == j].mean(0) for j in range(k)])
    inertia = float(((points - centres[labels]) ** 2).sum())
    return centres, labels, inertia


def kmeans(points, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300):
    """k-means of ``points`` [n, d]: k-means++ seeding, ``n_init`` seeded restarts, Lloyd
    iterations; the restart with the lowest inertia wins. Returns (centres [k, d], labels [n],
    inertia) as numpy arrays / float. Deterministic for (seed, k)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise InvalidInputError(f"kmeans expects points [n, d], got shape {points.shape}")
    if not 1 <= k <= len(points):
        raise InvalidInputError(f"kmeans: k={k} must lie in 1..{len(points)} (the number of points)")
    # Seeded per k, so the result for one k does not depend on which other ks were run.
    rng = np.random.default_rng([int(seed), int(k)])
    best = None
    for _ in range(max(1, int(n_init))):
        result = _lloyd(points, _kmeans_pp(points, k, rng), max_iter)
        if best is None or result[2] < best[2] - 1e-12 * max(1.0, abs(best[2])):
            best = result
    return best


def elbow_k(ks: Sequence[int], inertia: Sequence[float]) -> int:
    """Kneedle-style elbow: scale k and inertia to [0, 1], draw the chord from the first to the
    last point, and take the k lying farthest *below* the chord (the point where adding clusters
    stops paying off). Ties go to the smaller k; with no point below the chord, the smallest k.
    """
    ks = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertia, dtype=np.float64)
    if len(ks) < 3:
        raise InvalidInputError(f"the elbow needs an inertia curve of at least 3 values of k, got {len(ks)}")
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    span = y.max() - y.min()
    if span <= 0:
        return int(ks[0])
    y = (y - y.min()) / span
    chord = y[0] + (y[-1] - y[0]) * x
    # Perpendicular distance up to the constant 1/sqrt(1 + slope^2), which does not change the argmax.
    below = chord - y
    best = int(np.argmax(below))  # first maximum, i.e. the smaller k on ties
    return int(ks[best]) if below[best] > 1e-12 else int(ks[0])


# -- the analysis ------------------------------------------------------------------------------
@dataclass
class TimestepAnalysis:
    """Result of :func:`analyse`.

    - ``grid``: the analysed timesteps, ascending (T of them).
    - ``coords``: [N, T, n] PCA coordinates of every (image, timestep) point.
    - ``timestep_points``: [T, n] mean over images of ``coords``: what was clustered.
    - ``explained_variance_ratio``: per PCA component, of the total variance of all N*T points.
    - ``ks`` / ``inertia``: the elbow curve (k-means inertia for each k).
    - ``k``: clusters used; ``k_from_elbow``: True when chosen by the elbow, False when given.
    - ``labels``: cluster of each grid timestep, numbered in schedule order (cluster 0 holds the
      smallest timestep).
    - ``centres``: [k, n] cluster centres, in label order.
    - ``chosen``: the representative timestep of each cluster, ascending.
    """

    grid: list[int]
    coords: torch.Tensor
    timestep_points: torch.Tensor
    explained_variance_ratio: list[float]
    ks: list[int]
    inertia: list[float]
    k: int
    k_from_elbow: bool
    labels: list[int]
    centres: torch.Tensor
    chosen: list[int]
    seed: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(self.coords.shape[0])

    def chosen_text(self) -> str:
        """The chosen timesteps as the comma-separated text the timestep inputs accept."""
        return ", ".join(str(t) for t in self.chosen)

    def clusters(self) -> list[list[int]]:
        """Grid timesteps of each cluster, in label order."""
        return [[t for t, lab in zip(self.grid, self.labels, strict=True) if lab == j] for j in range(self.k)]

    def summary(self) -> str:
        how = "elbow of the k-means inertia curve" if self.k_from_elbow else "given"
        evr = self.explained_variance_ratio
        top2 = sum(evr[:2]) * 100
        return (
            f"{self.k} representative timesteps ({how}) from {self.n_images} images x {len(self.grid)} "
            f"timesteps: {self.chosen_text()}. PCA: {len(evr)} components, the first two explain {top2:.1f}% "
            f"of the variance."
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": ANALYSIS_KIND,
                "version": ANALYSIS_VERSION,
                "grid": self.grid,
                "coords": self.coords.tolist(),
                "timestep_points": self.timestep_points.tolist(),
                "explained_variance_ratio": self.explained_variance_ratio,
                "ks": self.ks,
                "inertia": self.inertia,
                "k": self.k,
                "k_from_elbow": self.k_from_elbow,
                "labels": self.labels,
                "centres": self.centres.tolist(),
                "chosen": self.chosen,
                "seed": self.seed,
                "meta": self.meta,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TimestepAnalysis:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise FileFormatError(f"timestep analysis JSON could not be parsed: {e}") from e
        if not isinstance(d, dict) or d.get("kind") != ANALYSIS_KIND:
            kind = d.get("kind") if isinstance(d, dict) else type(d).__name__
            raise FileFormatError(f"this JSON is not a DiffSketch timestep analysis (kind={kind!r})")
        if d.get("version") != ANALYSIS_VERSION:
            raise FileFormatError(
                f"timestep analysis format version {d.get('version')} is not supported "
                f"(this version reads {ANALYSIS_VERSION}); rerun the analysis"
            )
        try:
            return cls(
                grid=[int(t) for t in d["grid"]],
                coords=torch.tensor(d["coords"], dtype=torch.float32),
                timestep_points=torch.tensor(d["timestep_points"], dtype=torch.float32),
                explained_variance_ratio=[float(v) for v in d["explained_variance_ratio"]],
                ks=[int(v) for v in d["ks"]],
                inertia=[float(v) for v in d["inertia"]],
                k=int(d["k"]),
                k_from_elbow=bool(d["k_from_elbow"]),
                labels=[int(v) for v in d["labels"]],
                centres=torch.tensor(d["centres"], dtype=torch.float32),
                chosen=[int(t) for t in d["chosen"]],
                seed=int(d.get("seed", 0)),
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"timestep analysis JSON is missing or has a malformed field: {e!r}") from e


def _check_grid(grid, t: int) -> list[int]:
    try:
        grid = [int(g) for g in grid]
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"grid must be a list of integer timesteps, got {grid!r}") from e
    if len(grid) != t:
        raise InvalidInputError(
            f"grid has {len(grid)} timesteps but the vectors have {t} per image; they must match "
            "(vectors[:, i] belongs to grid[i])"
        )
    if any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise InvalidInputError(f"grid must be strictly ascending timesteps, got {grid}")
    return grid


def analyse(
    vectors: torch.Tensor,
    grid: Sequence[int],
    n_components: int = 25,
    k: int | None = None,
    k_max: int = 20,
    seed: int = 0,
    n_init: int = 10,
) -> TimestepAnalysis:
    """Choose representative timesteps from per-(image, timestep) feature vectors.

    ``vectors`` is [N_images, T, D] with ``vectors[:, i]`` captured at ``grid[i]`` (ascending).
    PCA to ``min(n_components, N*T, D)`` components over all N*T points; one point per timestep
    (mean over images); k-means for k = 1..min(k_max, T); ``k`` from the elbow unless given;
    per cluster the member timestep nearest its centre. See the module docstring.
    """
    if not isinstance(vectors, torch.Tensor):
        vectors = torch.as_tensor(np.asarray(vectors))
    if vectors.ndim != 3:
        raise InvalidInputError(
            f"vectors must be [N_images, T_timesteps, D], got shape {tuple(vectors.shape)}"
        )
    n_img, t, dim = vectors.shape
    if n_img < 1:
        raise InvalidInputError("the timestep analysis needs at least 1 sampled image, got 0")
    if t < 2:
        raise InvalidInputError(
            f"the timestep analysis needs at least 2 timesteps to choose between, got {t}; use more sampling steps"
        )
    if dim < 1:
        raise InvalidInputError("feature vectors are empty (D = 0): no layer was captured")
    grid = _check_grid(grid, t)
    if int(n_components) < 1:
        raise InvalidInputError(f"n_components must be at least 1, got {n_components}")
    if int(k_max) < 1:
        raise InvalidInputError(f"k_max must be at least 1, got {k_max}")
    if k is not None:
        k = int(k)
        if k < 1:
            raise InvalidInputError(f"k (number of representative timesteps) must be at least 1, got {k}")
        if k > t:
            raise InvalidInputError(
                f"k={k} clusters is more than the {t} timesteps being clustered: every cluster needs its own "
                f"timestep. Use k <= {t}, or sample with more steps."
            )
    elif min(int(k_max), t) < 3:
        raise InvalidInputError(
            f"choosing k by the elbow needs an inertia curve over at least k = 1..3, but only {min(int(k_max), t)} "
            f"values are possible ({t} timesteps, k_max={k_max}). Give k explicitly, or use more steps / a larger k_max."
        )
    if not torch.isfinite(vectors).all():
        raise InvalidInputError(
            "feature vectors contain NaN or inf (the sampler diverged?); cannot analyse them"
        )

    flat = vectors.reshape(n_img * t, dim)
    coords, _, ratio = pca(flat, n_components)
    if float(ratio.sum()) == 0.0:
        raise InvalidInputError(
            "all feature vectors are identical, so there is nothing to cluster (were the features captured?)"
        )
    coords = coords.reshape(n_img, t, -1)
    points = coords.mean(dim=0).numpy()  # one point per timestep; see the module docstring

    k_hi = min(int(k_max), t)
    if k is not None:
        k_hi = max(k_hi, k)
    ks = list(range(1, k_hi + 1))
    runs = {kk: kmeans(points, kk, seed=seed, n_init=n_init) for kk in ks}
    inertia = [runs[kk][2] for kk in ks]
    k_from_elbow = k is None
    if k is None:
        k = elbow_k(ks, inertia)
    centres, labels, _ = runs[k]

    # Number clusters in schedule order, then take each cluster's member nearest its centre.
    order = sorted(range(k), key=lambda j: int(np.flatnonzero(labels == j).min()))
    relabel = np.empty(k, dtype=int)
    relabel[order] = np.arange(k)
    labels = relabel[labels]
    centres = centres[order]
    chosen = []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        d2 = ((points[members] - centres[j]) ** 2).sum(1)
        chosen.append(grid[int(members[int(d2.argmin())])])

    return TimestepAnalysis(
        grid=grid,
        coords=coords.to(torch.float32),
        timestep_points=torch.from_numpy(points).to(torch.float32),
        explained_variance_ratio=[float(v) for v in ratio],
        ks=ks,
        inertia=[float(v) for v in inertia],
        k=int(k),
        k_from_elbow=k_from_elbow,
        labels=[int(v) for v in labels],
        centres=torch.from_numpy(centres).to(torch.float32),
        chosen=sorted(chosen),
        seed=int(seed),
        meta={
            "n_components_requested": int(n_components),
            "k_max": int(k_max),
            "n_init": int(n_init),
            "feature_dim": int(dim),
        },
    )


def plots(result: TimestepAnalysis, size: tuple[int, int] = (640, 400)) -> dict:
    """Diagnostic figures as PIL images: ``pca`` (components 1 and 2 of every (image, timestep)
    point, coloured by timestep), ``elbow`` (inertia against k, chosen k marked) and
    ``schedule`` (the grid with the chosen timesteps)."""
    from ..plotting import line_plot, scatter_plot, timeline_plot

    coords = result.coords
    n, t, c = coords.shape
    xs = coords[..., 0].reshape(-1)
    ys = coords[..., 1].reshape(-1) if c > 1 else torch.zeros(n * t)
    ts = torch.tensor(result.grid, dtype=torch.float32).repeat(n)
    evr = result.explained_variance_ratio
    pca_image = scatter_plot(
        xs,
        ys,
        ts,
        title=f"PCA of decoder features: {n} images x {t} timesteps",
        xlabel=f"PC1 ({evr[0] * 100:.1f}% of variance)",
        ylabel=f"PC2 ({evr[1] * 100:.1f}%)" if c > 1 else "PC2 (none)",
        colorbar_label="timestep",
        size=size,
    )
    how = "elbow" if result.k_from_elbow else "given"
    elbow_image = line_plot(
        {"": (result.ks, result.inertia)},
        title="k-means inertia over the per-timestep points",
        xlabel="number of clusters k",
        ylabel="inertia",
        markers=[(result.k, f"k={result.k} ({how})")],
        size=size,
        points=True,
    )
    schedule_image = timeline_plot(
        result.grid,
        result.chosen,
        title=f"{result.k} representative timesteps: {result.chosen_text()}",
        size=(size[0], max(140, size[1] * 2 // 5)),
    )
    return {"pca": pca_image, "elbow": elbow_image, "schedule": schedule_image}


# -- driver -----------------------------------------------------------------------------------
def run_timestep_analysis(
    backend,
    prompts: Sequence[str],
    n_samples: int,
    steps: int,
    k: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    cfg: float = 5.0,
    width: int = 512,
    height: int = 512,
    n_components: int = 25,
    k_max: int = 20,
    include_uncond: bool = False,
    reducer: FeatureReducer | None = None,
) -> TimestepAnalysis:
    """Sample ``n_samples`` images and analyse their decoder features at every grid timestep.

    Image ``i`` uses ``prompts[i % len(prompts)]`` and seed ``seed + i``. The backend reduces
    each tap with ``reducer`` as its hook fires, so only ``[2, dim]`` per (timestep, layer) is
    kept. The vector of one (image, timestep) is the concatenation over layers of the
    *conditional* branch (the features of the image being made; the unconditional branch of an
    empty prompt is shared by every image), plus the unconditional branch when
    ``include_uncond``.

    ``progress(done, total)`` is called after each image. When ``should_stop()`` turns true the
    sampling stops and the images done so far are analysed (``meta["stopped_early"]``); if no
    image was done, :class:`TrainingInterrupted` is raised.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in (prompts or [])]
    if not prompts:
        raise InvalidInputError(
            "the timestep analysis needs at least one prompt (an empty prompt '' is allowed)"
        )
    n_samples = int(n_samples)
    if n_samples < 1:
        raise InvalidInputError(f"n_samples must be at least 1, got {n_samples}")
    # the model's own grid: DDIM for the UNets, the flow grid for Z-Image and SD 3.5
    grid = list(getattr(backend, "grid", ddim_grid)(int(steps)))
    t = len(grid)
    # Fail before any sampling on settings analyse() would reject afterwards.
    if t < 2:
        raise InvalidInputError(
            f"steps={steps} gives {t} timestep; the analysis needs at least 2 (use more steps)"
        )
    if k is not None and not 1 <= int(k) <= t:
        raise InvalidInputError(
            f"k={k} must lie in 1..{t}: the {steps}-step grid has {t} timesteps to cluster. "
            f"Use k <= {t}, or more steps."
        )
    if k is None and min(int(k_max), t) < 3:
        raise InvalidInputError(
            f"choosing k by the elbow needs at least 3 candidate values of k ({t} timesteps, k_max={k_max}); "
            "give k explicitly, or use more steps / a larger k_max."
        )
    reducer = reducer if reducer is not None else FeatureReducer(seed=seed, out_device="cpu")
    branches = (UNCOND, COND) if include_uncond else (COND,)

    conds: dict[str, torch.Tensor] = {}
    vectors: torch.Tensor | None = None
    done = 0
    for i in range(n_samples):
        if should_stop is not None and should_stop():
            break
        prompt = prompts[i % len(prompts)]
        if prompt not in conds:
            conds[prompt] = backend.encode_prompt(prompt)
        sampling = SamplingSettings(
            seed=int(seed) + i, steps=int(steps), cfg=cfg, width=width, height=height, timesteps=tuple(grid)
        )
        out = backend.sample(conds[prompt], sampling, unet_reduce=reducer, decode=False)
        missing = [ts for ts in grid if ts not in out.unet]
        if missing:
            raise CaptureError(
                f"the sampler returned no features for timesteps {missing} of the {steps}-step grid; "
                "the schedule must visit every grid timestep"
            )
        rows = []
        for ts in grid:
            per_layer = out.unet[ts]
            for layer, x in enumerate(per_layer):
                if x.ndim != 2 or x.shape[0] not in (1, 2):
                    raise CaptureError(
                        f"reduced features of layer {layer} at timestep {ts} have shape {tuple(x.shape)}; "
                        "expected [2, d] (uncond, cond) or [1, d] (cond alone: a flow model at cfg 1)"
                    )
            if include_uncond and per_layer[0].shape[0] == 1:
                raise InvalidInputError(
                    f"include_uncond needs the unconditional branch, which a flow model at cfg {cfg:g} does not "
                    "evaluate; use cfg > 1 or leave include_uncond off"
                )
            # two branches are [uncond, cond]; one is the cond branch alone
            rows.append(
                torch.cat(
                    [
                        x[b if x.shape[0] == 2 else 0].to("cpu", torch.float32)
                        for x in per_layer
                        for b in branches
                    ]
                )
            )
        sample_vectors = torch.stack(rows)  # [T, D]
        if vectors is None:
            vectors = torch.empty(n_samples, t, sample_vectors.shape[1], dtype=torch.float32)
        elif sample_vectors.shape[1] != vectors.shape[2]:
            raise CaptureError(
                f"image {i} gave {sample_vectors.shape[1]} feature values per timestep, image 0 gave "
                f"{vectors.shape[2]}; the reducer must give a fixed size"
            )
        vectors[i] = sample_vectors
        done += 1
        if progress is not None:
            progress(done, n_samples)
    if done == 0:
        raise TrainingInterrupted("the timestep analysis was cancelled before the first image was sampled")
    result = analyse(vectors[:done], grid, n_components=n_components, k=k, k_max=k_max, seed=seed)
    result.meta.update(
        {
            "steps": int(steps),
            "n_samples": done,
            "n_samples_requested": n_samples,
            "stopped_early": done < n_samples,
            "prompts": prompts[: min(len(prompts), done)],
            "cfg": float(cfg),
            "width": int(width),
            "height": int(height),
            "branches": ["uncond", "cond"] if include_uncond else ["cond"],
            "reducer": reducer.config(),
        }
    )
    return result
