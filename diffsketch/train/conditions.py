"""Condition Diffusion Sampling for Training (CDST), docs/method.md §6.

DiffSketch trains on one new Stable Diffusion sample per iteration. The text condition of that
sample starts at the example's own prompt embedding (the "pivot") and drifts towards random
conditions drawn from a Gaussian fitted to the text embeddings of many prompts:

- Distribution (docs/method.md §6): PCA of the flattened conditionings of a prompt list (the
  ``[77, D]`` token embeddings, and for SDXL the pooled embedding after them, so both parts are
  drawn together with their correlations), keeping 512 components; a condition is drawn as ``z ~ N(score_mean, diag(explained_variance))``
  in PCA space and mapped back with the inverse transform ``mean + z @ components``. (The
  authors' ``cov_pca.npy`` is diagonal with the explained variances on its diagonal, so a
  diagonal Gaussian is the same distribution.)
- Schedule: for iteration ``i < h_iter`` the condition is
  ``(a / (a + b)) * pivot + (b / (a + b)) * c_rand`` with ``a = sqrt(1 - i/h_iter)`` and
  ``b = sqrt(i/h_iter)``; from ``h_iter`` on it is ``c_rand`` alone, for every part of the
  conditioning (SDXL's pooled embedding with the same weights as the tokens).
  :func:`blend_weight` is the single place that formula lives.

The text encoder is passed in as a function ``prompt -> Conditioning`` (or ``Tensor[1, 77, D]``
where there is no pooled part); that is how both the ComfyUI CLIP object and diffusers' text
encoders plug in without this module knowing either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch

from .. import fileio
from ..backends.conditioning import Conditioning
from ..capture.spec import SD1, check_family, family_name
from ..errors import FileFormatError, InvalidInputError, TrainingInterrupted

CONDITIONS_KIND = "conditions"
CONDITIONS_VERSION = 1

#: Number of PCA components the released code keeps (docs/method.md §6).
DEFAULT_N_COMPONENTS = 512
#: Iteration at which the condition becomes fully random (``--hiter`` in the released code).
DEFAULT_H_ITER = 1000

# The exact fit eigendecomposes an S x S float64 Gram matrix, S = min(prompts, values per
# embedding); above this S it would cost more than ~0.5 GB, so the fit switches to a seeded
# randomized SVD.
EXACT_FIT_MAX_ROWS = 8192
# Columns (or rows) processed at a time while fitting: 2,400 x 4096 float64 is 79 MB.
_FIT_CHUNK = 4096
# Eigenvalues below this fraction of the largest are numerical zeros (duplicate prompts, or
# fewer distinct embeddings than components): their directions are undefined and are dropped.
_RELATIVE_EIGENVALUE_FLOOR = 1e-10

DEFAULT_PROMPTS_RESOURCE = "data/prompts.txt"


# --- prompt lists --------------------------------------------------------------------------------


def parse_prompts(text: str) -> list[str]:
    """Prompts from a one-per-line text: blank lines and ``#`` comment lines are skipped,
    surrounding spaces removed and repeated prompts kept once (in first-seen order)."""
    seen: set[str] = set()
    prompts: list[str] = []
    for line in text.splitlines():
        prompt = line.strip()
        if not prompt or prompt.startswith("#") or prompt in seen:
            continue
        seen.add(prompt)
        prompts.append(prompt)
    return prompts


def load_default_prompts() -> list[str]:
    """The prompt list shipped with the package (``diffsketch/data/prompts.txt``, written by
    ``tools/make_prompts.py``): over 2,000 varied prompts for fitting the CDST distribution."""
    resource = resources.files("diffsketch")
    for part in DEFAULT_PROMPTS_RESOURCE.split("/"):  # one part at a time: Python 3.10's joinpath takes one
        resource = resource / part
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the default prompt list diffsketch/{DEFAULT_PROMPTS_RESOURCE} is missing from the installed "
            "package; reinstall DiffSketch or pass your own prompt list."
        ) from e
    return parse_prompts(text)


# --- the schedule --------------------------------------------------------------------------------


def blend_weight(iteration: int, h_iter: int = DEFAULT_H_ITER) -> float:
    """Weight of the random condition at ``iteration`` (the pivot gets ``1 - weight``).

    ``b / (a + b)`` with ``a = sqrt(1 - i/h_iter)``, ``b = sqrt(i/h_iter)`` for ``i < h_iter``
    (0 at i = 0, about 0.09 at i = 10 of 1000, 0.5 at i = h_iter/2), and 1 from ``h_iter`` on.
    ``h_iter = 0`` means no warm-up: every condition is random.
    """
    if iteration < 0:
        raise InvalidInputError(f"CDST iteration must be 0 or more, got {iteration}")
    if h_iter < 0:
        raise InvalidInputError(
            f"CDST h_iter (iterations before conditions are fully random) must be 0 or more, got {h_iter}"
        )
    if iteration >= h_iter:
        return 1.0
    progress = iteration / h_iter
    alpha = math.sqrt(1.0 - progress)
    beta = math.sqrt(progress)
    return beta / (alpha + beta)


def blend(
    pivot: Conditioning | torch.Tensor,
    c_rand: Conditioning | torch.Tensor,
    iteration: int,
    h_iter: int = DEFAULT_H_ITER,
) -> Conditioning:
    """The CDST condition for ``iteration``: ``(1 - w) * pivot + w * c_rand`` with
    ``w = blend_weight(iteration, h_iter)`` for every part; pure ``c_rand`` from ``h_iter`` on.

    ``pivot`` is one conditioning (the example's prompt, context ``[1, T, D]``), ``c_rand`` a
    batch of ``n`` of the same shape. The result has ``c_rand``'s batch size and ``pivot``'s
    dtype and device. Tensors stand for conditionings without a pooled part.
    """
    pivot, c_rand = Conditioning.of(pivot), Conditioning.of(c_rand)
    if pivot.batch_size != 1:
        raise InvalidInputError(
            f"CDST pivot must be one prompt's conditioning [1, T, D], got {pivot.describe()}"
        )
    if (
        tuple(c_rand.context.shape[1:]) != tuple(pivot.context.shape[1:])
        or c_rand.pooled_dim != pivot.pooled_dim
    ):
        raise InvalidInputError(
            f"random condition ({c_rand.describe()}) does not match the pivot ({pivot.describe()}): the condition "
            "distribution was fitted with a different text encoder; refit it with the text encoder of the "
            "checkpoint you train on."
        )
    weight = blend_weight(iteration, h_iter)
    like = pivot.context
    c_rand = c_rand.to(device=like.device, dtype=like.dtype)
    if weight >= 1.0:
        return c_rand.map(torch.clone)
    return pivot.lerp(c_rand, weight)


# --- the distribution ----------------------------------------------------------------------------


class ConditionSampler:
    """A Gaussian over text-encoder conditions, in the PCA space of a prompt list's embeddings.

    Fitted with :meth:`fit` (embeddings) or :meth:`fit_from_prompts` (an encode function), saved
    and loaded as a ``conditions`` safetensors file. All tensors are float32:

    - ``mean``: ``[F]`` mean flattened conditioning, ``F = T * D + P`` (T = 77 tokens, D the
      context width, P the pooled width: 0, or 1280 for SDXL).
    - ``components``: ``[k, F]`` orthonormal principal directions, largest variance first.
    - ``score_mean``: ``[k]`` mean of the prompts' PCA scores (zero up to rounding, kept because
      the released code draws around a stored mean).
    - ``variance``: ``[k]`` explained variance of each component (unbiased, ``/(N - 1)``).
    """

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        score_mean: torch.Tensor,
        variance: torch.Tensor,
        embedding_shape: Sequence[int],
        n_prompts: int,
        n_components_requested: int | None = None,
        text_encoder_fingerprint: str = "",
        notice: str = "",
        pooled_dim: int = 0,
        family: str = SD1,
    ) -> None:
        embedding_shape = tuple(int(s) for s in embedding_shape)
        if len(embedding_shape) != 2 or min(embedding_shape) < 1:
            raise InvalidInputError(f"embedding_shape must be (tokens, dim), got {embedding_shape}")
        if int(pooled_dim) < 0:
            raise InvalidInputError(f"pooled_dim must be 0 or more, got {pooled_dim}")
        features = embedding_shape[0] * embedding_shape[1] + int(pooled_dim)
        k = components.shape[0] if components.dim() == 2 else -1
        if (
            mean.shape != (features,)
            or components.shape != (k, features)
            or score_mean.shape != (k,)
            or variance.shape != (k,)
            or k < 1
        ):
            raise InvalidInputError(
                f"inconsistent condition distribution: mean {list(mean.shape)}, components {list(components.shape)}, "
                f"score_mean {list(score_mean.shape)}, variance {list(variance.shape)} for embeddings "
                f"{list(embedding_shape)} + pooled {pooled_dim} (expected mean [{features}], components [k, {features}], "
                "k >= 1)"
            )
        if not torch.isfinite(variance).all() or (variance < 0).any():
            raise InvalidInputError("condition distribution variances must be finite and non-negative")
        self.mean = mean.float()
        self.components = components.float()
        self.score_mean = score_mean.float()
        self.variance = variance.float()
        self.embedding_shape = embedding_shape
        self.n_prompts = int(n_prompts)
        self.n_components_requested = int(n_components_requested if n_components_requested is not None else k)
        self.text_encoder_fingerprint = str(text_encoder_fingerprint)
        self.notice = str(notice)
        self.pooled_dim = int(pooled_dim)
        #: The backbone family whose text encoder(s) the distribution was fitted with.
        self.family = str(family)

    # --- properties -------------------------------------------------------------------------------

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def device(self) -> torch.device:
        return self.components.device

    def to(self, device) -> ConditionSampler:
        """A copy whose tensors live on ``device`` (sampling then happens there)."""
        return ConditionSampler(
            self.mean.to(device),
            self.components.to(device),
            self.score_mean.to(device),
            self.variance.to(device),
            self.embedding_shape,
            self.n_prompts,
            self.n_components_requested,
            self.text_encoder_fingerprint,
            self.notice,
            self.pooled_dim,
            self.family,
        )

    def describe(self) -> str:
        pooled = f" + pooled [{self.pooled_dim}]" if self.pooled_dim else ""
        text = (
            f"CDST distribution ({family_name(self.family)}): {self.n_components} PCA components of {self.n_prompts} "
            f"prompt embeddings {list(self.embedding_shape)}{pooled}, {float(self.variance.sum()):.4g} total "
            "variance kept"
        )
        return f"{text} ({self.notice})" if self.notice else text

    # --- fitting ----------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        embeddings: Conditioning | torch.Tensor,
        n_components: int = DEFAULT_N_COMPONENTS,
        seed: int = 0,
        text_encoder_fingerprint: str = "",
        family: str = SD1,
    ) -> ConditionSampler:
        """PCA of ``embeddings`` (a batch of N conditionings, or a ``[N, T, D]`` tensor of contexts;
        one row per prompt), keeping ``min(n_components, N - 1, F)`` components of the
        ``F = T * D + P`` flattened values.

        Fewer components than asked (a short prompt list, or prompts whose embeddings only span a
        few directions) is allowed; ``.notice`` then says so.

        Memory: the fit never builds a centred copy of the embeddings. With N <= F (the usual
        case: 2,400 prompts vs F = 77 * 768 = 59,136) it eigendecomposes the N x N Gram matrix of
        the centred rows, accumulated in float64 over column chunks, then forms the components
        chunk by chunk; the peak beyond the input is about k x F float32 (121 MB for 512 x
        59,136) plus one N x 4096 float64 chunk (about 0.3 GB in all for the default list; the fit
        took 1.5 to 2.5 minutes on 2 busy CPU cores). SDXL's F = 77 * 2048 + 1280 = 158,976 makes
        that k x F part 0.65 GB (float64 while the components are formed) and its input 1.5 GB.
        The result is an exact SVD and does not depend on ``seed``. Only above EXACT_FIT_MAX_ROWS
        prompts (with F larger still) does it use a randomized SVD, seeded with ``seed``.
        """
        if not isinstance(embeddings, (torch.Tensor, Conditioning)) or (
            isinstance(embeddings, torch.Tensor) and embeddings.dim() != 3
        ):
            shape = (
                list(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            )
            raise InvalidInputError(
                f"prompt embeddings must be a Conditioning or a tensor [N, tokens, dim], got {shape}"
            )
        embeddings = Conditioning.of(embeddings)
        _, tokens, dim = (int(s) for s in embeddings.context.shape)
        return cls._fit_rows(
            embeddings.flatten().detach(),
            (tokens, dim),
            embeddings.pooled_dim,
            n_components,
            seed,
            text_encoder_fingerprint,
            family,
        )

    @classmethod
    def _fit_rows(
        cls,
        rows: torch.Tensor,
        embedding_shape: tuple[int, int],
        pooled_dim: int,
        n_components: int,
        seed: int,
        text_encoder_fingerprint: str,
        family: str,
    ) -> ConditionSampler:
        """:meth:`fit` on the flattened conditionings ``rows`` ``[N, T * D + P]``."""
        n_prompts = int(rows.shape[0])
        tokens, dim = embedding_shape
        if n_prompts < 2:
            raise InvalidInputError(
                f"the prompt list gave {n_prompts} prompt embedding(s); fitting the CDST condition distribution "
                "needs at least 2 prompts (the default list has over 2,000). Use a longer prompt list."
            )
        if n_components < 1:
            raise InvalidInputError(f"n_components must be at least 1, got {n_components}")
        if tokens < 1 or dim < 1:
            raise InvalidInputError(f"prompt embeddings have an empty shape {[n_prompts, tokens, dim]}")
        with torch.no_grad():
            if rows.device.type != "cpu":
                rows = rows.cpu()
            if rows.dtype != torch.float64:
                rows = rows.float()  # fp16/bf16 matmuls on CPU are slow and inaccurate
            if not torch.isfinite(rows).all():
                raise InvalidInputError("prompt embeddings contain NaN or infinity; check the text encoder")
            features = rows.shape[1]
            possible = min(n_prompts - 1, features)
            wanted = min(n_components, possible)
            mean = _column_mean(rows)
            if min(n_prompts, features) <= EXACT_FIT_MAX_ROWS:
                components, eigenvalues = _exact_pca(rows, mean, wanted)
            else:
                components, eigenvalues = _randomized_pca(rows, mean, wanted, seed)
            # Scores of the prompts themselves: their mean is what the draws are centred on.
            score_mean = _score_mean(rows, mean, components)
        kept = components.shape[0]
        if kept < 1:
            raise InvalidInputError(
                f"all {n_prompts} prompts of the prompt list encode to the same embedding; use varied prompts."
            )
        notice = _fit_notice(n_components, kept, wanted, n_prompts, features)
        return cls(
            mean=mean.float(),
            components=components.float(),
            score_mean=score_mean.float(),
            variance=(eigenvalues / (n_prompts - 1)).float(),
            embedding_shape=(tokens, dim),
            n_prompts=n_prompts,
            n_components_requested=n_components,
            text_encoder_fingerprint=text_encoder_fingerprint,
            notice=notice,
            pooled_dim=pooled_dim,
            family=family,
        )

    @classmethod
    def fit_from_prompts(
        cls,
        encode: Callable[[str], Conditioning | torch.Tensor],
        prompts: Sequence[str],
        n_components: int = DEFAULT_N_COMPONENTS,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        text_encoder_fingerprint: str = "",
        *,
        family: str,
    ) -> ConditionSampler:
        """Encode each prompt with ``encode`` (``str -> Conditioning``, or ``Tensor[1, T, D]``
        without a pooled part; any device/dtype) and :meth:`fit` the embeddings. ``family`` is the
        backbone family of ``encode``'s text encoder(s) (``backend.spec.family``), which the file
        records so that a sampler fitted on one family's CLIP is refused by another's model.

        ``progress(done, total)`` is called after each prompt. ``should_stop()`` is polled before
        each prompt; when it returns True the fit stops with :class:`TrainingInterrupted` (nothing
        has been written, so there is nothing to resume).
        """
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise InvalidInputError(
                "the prompt list is empty; CDST needs a list of varied prompts (one per line) to fit the "
                "condition distribution, e.g. the default list from load_default_prompts()."
            )
        total = len(prompts)
        rows: torch.Tensor | None = None
        shape: tuple[tuple[int, ...], int] | None = None
        for index, prompt in enumerate(prompts):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(
                    f"fitting the CDST condition distribution was cancelled after {index} of {total} prompts"
                )
            embedding = _as_single_embedding(encode(prompt), prompt)
            this = (tuple(embedding.context.shape[1:]), embedding.pooled_dim)
            if rows is None:
                shape = this
                # Filled in place: stacking a list at the end would briefly hold two copies.
                rows = torch.empty((total, embedding.flatten().shape[1]), dtype=torch.float32)
            elif this != shape:
                raise InvalidInputError(
                    f"prompt {index + 1} {prompt!r} encodes to {embedding.describe()}, but earlier prompts gave "
                    f"context [1, {', '.join(map(str, shape[0]))}]{f' + pooled [1, {shape[1]}]' if shape[1] else ''}; "
                    "shorten it (prompts over 75 tokens make longer embeddings) or remove it from the list."
                )
            rows[index] = embedding.flatten()[0].detach().to(device="cpu", dtype=torch.float32)
            if progress is not None:
                progress(index + 1, total)
        context_shape, pooled_dim = shape
        return cls._fit_rows(
            rows, context_shape, pooled_dim, n_components, seed, text_encoder_fingerprint, family
        )

    # --- sampling ---------------------------------------------------------------------------------

    def sample(self, generator: torch.Generator | None = None, n: int = 1) -> Conditioning:
        """``n`` random conditionings (float32, on :attr:`device`): ``z ~ N(score_mean,
        diag(variance))``, ``c = mean + z @ components``, split into context ``[n, T, D]`` and,
        where fitted with one, the pooled part ``[n, P]``."""
        if n < 1:
            raise InvalidInputError(f"number of conditions to draw must be at least 1, got {n}")
        noise_device = generator.device if generator is not None else self.device
        noise = torch.randn(
            (n, self.n_components), generator=generator, device=noise_device, dtype=torch.float32
        )
        scores = self.score_mean + noise.to(self.device) * self.variance.sqrt()
        flat = torch.addmm(self.mean.unsqueeze(0), scores, self.components)
        return Conditioning.unflatten(flat, *self.embedding_shape, self.pooled_dim)

    def condition_for_iteration(
        self,
        pivot: Conditioning | torch.Tensor,
        iteration: int,
        h_iter: int = DEFAULT_H_ITER,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """The CDST condition (batch of one) for training iteration ``iteration``.

        A random condition is drawn at every iteration, even at i = 0 where its weight is zero,
        so that the random stream (and hence every later condition) does not depend on h_iter.
        """
        self.check_pivot(pivot)
        return blend(pivot, self.sample(generator, 1), iteration, h_iter)

    def check_pivot(self, pivot: Conditioning | torch.Tensor) -> None:
        pivot = Conditioning.of(pivot)
        if tuple(pivot.context.shape[1:]) != self.embedding_shape or pivot.pooled_dim != self.pooled_dim:
            pooled = f" + pooled [1, {self.pooled_dim}]" if self.pooled_dim else ""
            raise InvalidInputError(
                f"the example's prompt embedding is {pivot.describe()} but the condition distribution was fitted on "
                f"[1, {', '.join(map(str, self.embedding_shape))}]{pooled} ({family_name(self.family)}): refit it "
                "with the text encoder of the checkpoint you train on."
            )

    def check_family(self, family: str, model_what: str = "the model") -> None:
        """Raise, naming both, when the distribution was fitted for another backbone family."""
        check_family(
            self.family,
            family,
            "the condition distribution (CDST)",
            model_what,
            f"Fit the conditions again with the {family_name(family)} model's CLIP",
        )

    def check_text_encoder(self, fingerprint: str) -> None:
        """Raise if this distribution was fitted with another text encoder (when both are known)."""
        if self.text_encoder_fingerprint and fingerprint and fingerprint != self.text_encoder_fingerprint:
            raise InvalidInputError(
                f"the condition distribution was fitted with text encoder {self.text_encoder_fingerprint!r}, not "
                f"{fingerprint!r}; refit it with the text encoder of the checkpoint you train on."
            )

    # --- files ------------------------------------------------------------------------------------

    def header(self) -> dict:
        return {
            "n_prompts": self.n_prompts,
            "n_components": self.n_components,
            "n_components_requested": self.n_components_requested,
            "embedding_shape": list(self.embedding_shape),
            "pooled_dim": self.pooled_dim,
            "family": self.family,
            "text_encoder_fingerprint": self.text_encoder_fingerprint,
            "notice": self.notice,
        }

    def save(self, path: str | os.PathLike, text_encoder_fingerprint: str | None = None) -> Path:
        """Write a ``conditions`` file (atomic). ``text_encoder_fingerprint`` overrides the stored one."""
        header = self.header()
        if text_encoder_fingerprint is not None:
            header["text_encoder_fingerprint"] = str(text_encoder_fingerprint)
        tensors = {
            "mean": self.mean,
            "components": self.components,
            "score_mean": self.score_mean,
            "variance": self.variance,
        }
        return fileio.save_model_file(path, tensors, CONDITIONS_KIND, CONDITIONS_VERSION, header)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> ConditionSampler:
        tensors, header = fileio.load_model_file(path, CONDITIONS_KIND, (CONDITIONS_VERSION,), device=device)
        name = os.path.basename(os.fspath(path))
        missing = [key for key in ("mean", "components", "score_mean", "variance") if key not in tensors]
        if missing:
            raise FileFormatError(f"{name} lacks the tensor(s) {missing}; re-create the conditions file.")
        try:
            sampler = cls(
                mean=tensors["mean"],
                components=tensors["components"],
                score_mean=tensors["score_mean"],
                variance=tensors["variance"],
                embedding_shape=header["embedding_shape"],
                n_prompts=header["n_prompts"],
                n_components_requested=header.get("n_components_requested"),
                text_encoder_fingerprint=header.get("text_encoder_fingerprint", ""),
                notice=header.get("notice", ""),
                # files written before these were recorded are SD 1.x, without a pooled part
                pooled_dim=header.get("pooled_dim", 0),
                family=header.get("family", SD1),
            )
        except (InvalidInputError, KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"{name} is not a valid conditions file ({e}); re-create it.") from e
        if header.get("n_components") != sampler.n_components:
            raise FileFormatError(
                f"{name}: header says {header.get('n_components')} components but the file holds "
                f"{sampler.n_components}; re-create it."
            )
        return sampler


# --- helpers -------------------------------------------------------------------------------------


def _as_single_embedding(embedding, prompt: str) -> Conditioning:
    if isinstance(embedding, torch.Tensor) and embedding.dim() == 2:
        embedding = embedding.unsqueeze(0)
    if not isinstance(embedding, (torch.Tensor, Conditioning)):
        raise InvalidInputError(
            f"the text encoder returned {type(embedding).__name__} for prompt {prompt!r}, not a conditioning"
        )
    if isinstance(embedding, torch.Tensor) and embedding.dim() != 3:
        raise InvalidInputError(
            f"the text encoder returned shape {list(embedding.shape)} for prompt {prompt!r}; expected [1, tokens, dim]"
        )
    embedding = Conditioning.of(embedding)
    if embedding.batch_size != 1:
        raise InvalidInputError(
            f"the text encoder returned {embedding.describe()} for prompt {prompt!r}; expected one conditioning"
        )
    return embedding


def _column_chunks(features: int):
    for start in range(0, features, _FIT_CHUNK):
        yield slice(start, min(start + _FIT_CHUNK, features))


def _column_mean(rows: torch.Tensor) -> torch.Tensor:
    mean = torch.empty(rows.shape[1], dtype=torch.float64)
    for cols in _column_chunks(rows.shape[1]):
        mean[cols] = rows[:, cols].double().mean(dim=0)
    return mean


def _centred(rows: torch.Tensor, mean: torch.Tensor, cols: slice) -> torch.Tensor:
    return rows[:, cols].double() - mean[cols]


def _keep_nonzero(eigenvalues: torch.Tensor, vectors: torch.Tensor, wanted: int):
    """Largest ``wanted`` eigenpairs (descending), without numerically-zero ones."""
    order = torch.argsort(eigenvalues, descending=True)[:wanted]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    top = float(eigenvalues[0]) if eigenvalues.numel() else 0.0
    if top <= 0.0:  # every prompt gave the same embedding
        return eigenvalues[:0], vectors[:, :0]
    keep = eigenvalues > top * _RELATIVE_EIGENVALUE_FLOOR
    return eigenvalues[keep], vectors[:, keep]


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Eigenvectors are defined up to sign: make each component's largest-magnitude entry positive,
    so that the same data always gives the same components."""
    if components.shape[0] == 0:
        return components
    pivots = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(components.shape[0]), pivots])
    signs[signs == 0] = 1
    return components * signs.unsqueeze(1)


def _exact_pca(rows: torch.Tensor, mean: torch.Tensor, wanted: int):
    """Exact PCA by eigendecomposition of the smaller of the two Gram matrices (float64)."""
    n, features = rows.shape
    if n <= features:
        gram = torch.zeros((n, n), dtype=torch.float64)
        for cols in _column_chunks(features):
            block = _centred(rows, mean, cols)
            gram.addmm_(block, block.T)
        eigenvalues, vectors = torch.linalg.eigh(gram)
        eigenvalues, vectors = _keep_nonzero(eigenvalues, vectors, wanted)
        # Right singular vectors: V^T = U^T Xc / s, built a column chunk at a time.
        singular = eigenvalues.sqrt()
        components = torch.empty((vectors.shape[1], features), dtype=torch.float64)
        for cols in _column_chunks(features):
            components[:, cols] = (vectors.T @ _centred(rows, mean, cols)) / singular.unsqueeze(1)
    else:
        covariance = torch.zeros((features, features), dtype=torch.float64)
        for start in range(0, n, _FIT_CHUNK):
            block = rows[start : start + _FIT_CHUNK].double() - mean
            covariance.addmm_(block.T, block)
        eigenvalues, vectors = torch.linalg.eigh(covariance)
        eigenvalues, vectors = _keep_nonzero(eigenvalues, vectors, wanted)
        components = vectors.T.contiguous()
    return _fix_signs(components), eigenvalues


def _randomized_pca(
    rows: torch.Tensor,
    mean: torch.Tensor,
    wanted: int,
    seed: int,
    oversample: int = 16,
    power_iterations: int = 4,
):
    """Randomized SVD (Halko et al.) of the centred rows without forming them: products with
    ``Xc = X - 1 m^T`` are done as ``X @ v - 1 (m . v)``; seeded, so deterministic."""
    n, features = rows.shape
    width = min(wanted + oversample, n, features)
    generator = torch.Generator().manual_seed(int(seed))
    mean32 = mean.to(rows.dtype)

    def times(matrix):  # Xc @ matrix, matrix [F, w]
        return (rows @ matrix) - (mean32 @ matrix).unsqueeze(0)

    def times_transposed(matrix):  # Xc^T @ matrix, matrix [n, w]
        return (rows.T @ matrix) - mean32.unsqueeze(1) * matrix.sum(dim=0, keepdim=True)

    basis = torch.linalg.qr(times(torch.randn((features, width), generator=generator, dtype=rows.dtype))).Q
    for _ in range(power_iterations):
        basis = torch.linalg.qr(times_transposed(basis)).Q
        basis = torch.linalg.qr(times(basis)).Q
    # Xc ~= Q B with B = Q^T Xc [w, F]; its exact PCA comes from the small w x w Gram matrix.
    projected = times_transposed(basis).T.double()
    eigenvalues, vectors = torch.linalg.eigh(projected @ projected.T)
    eigenvalues, vectors = _keep_nonzero(eigenvalues, vectors, wanted)
    components = (vectors.T @ projected) / eigenvalues.sqrt().unsqueeze(1)
    return _fix_signs(components), eigenvalues


def _score_mean(rows: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(components.shape[0], dtype=torch.float64)
    for cols in _column_chunks(rows.shape[1]):
        total += _centred(rows, mean, cols).sum(dim=0) @ components[:, cols].T
    return total / rows.shape[0]


def _fit_notice(requested: int, kept: int, possible_by_count: int, n_prompts: int, features: int) -> str:
    if kept >= requested:
        return ""
    if kept < possible_by_count:
        return (
            f"kept {kept} of {requested} requested PCA components: the {n_prompts} prompt embeddings only span "
            f"{kept} directions (repeated or near-identical prompts); use more varied prompts."
        )
    if n_prompts - 1 < features:
        return (
            f"kept {kept} of {requested} requested PCA components: {n_prompts} prompts give at most "
            f"{n_prompts - 1}; use a prompt list with more than {requested} prompts for all {requested}."
        )
    return f"kept {kept} of {requested} requested PCA components: the embeddings have only {features} values."
