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

Transformer families (experimental): SD 3.5's conditioning has 632,832 values per prompt, so the
fit streams the embeddings to a temporary file and keeps its own memory under a stated bound
(:func:`fit_memory_bound`), with float16 components; Z-Image's prompts, whose token counts vary,
are brought to one length first (:func:`to_token_length`), and the draws and the pivot have it;
Flux.1's have 256 T5 tokens for prompts of up to 255 (1,049,344 values with the pooled CLIP-L
vector). SD 3.5's and Flux.1's longer prompts have longer contexts and are refused by name
(:func:`~diffsketch.backends.prompt.longer_context_hint` says which).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .. import fileio
from ..backends.conditioning import Conditioning
from ..backends.prompt import longer_context_hint
from ..capture.spec import FLOW_FAMILIES, SD1, ZIMAGE, check_family, family_name
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
# What BLAS/LAPACK and the C allocator hold during a fit besides its tensors (fit_memory_bound).
_FIT_LIBRARY_OVERHEAD = 256 * 2**20
#: Families whose text encoder gives each prompt its own token count (ComfyUI's Qwen3 encoder for
#: Z-Image pads nothing): their prompts are brought to one length by :func:`to_token_length`.
VARIABLE_LENGTH_FAMILIES = (ZIMAGE,)
#: Families whose components are kept (in memory and in the file) as float16: the transformers'
#: conditionings have 3 to 4 times SDXL's values (SD 3.5: 154 x 4096 + 2048 = 632,832), so float32
#: components would make a 1.3 GB file. Unit-length components of F values have entries of about
#: 1/sqrt(F) = 1.3e-3, which float16 holds to about 5e-4 of their size; the UNet families keep
#: float32, so their files stay what they were.
FLOAT16_COMPONENT_FAMILIES = FLOW_FAMILIES
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


# --- token length, precision and memory of the fit ----------------------------------------------


def to_token_length(conditioning: Conditioning | torch.Tensor, tokens: int) -> Conditioning:
    """``conditioning`` with its context brought to ``tokens`` tokens; the pooled part unchanged.

    A longer context keeps its first ``tokens`` tokens. Qwen3 (Z-Image's encoder) is causal, so
    those are exactly the states of the prompt's first ``tokens`` tokens. A shorter one gets zero
    tokens after its own. Neither ComfyUI's Z-Image encoder nor diffusers' pipeline pads a prompt
    (diffusers drops the padded positions by the attention mask); the model itself appends a
    learned, prompt-independent pad token after the caption (up to a multiple of 32 tokens) and
    attends to it unmasked. The zero vector is the context value whose embedding is likewise one
    constant token (the caption embedder's RMSNorm maps it to zero, its Linear to the bias), and
    it is what ComfyUI's encoders write at masked positions where they zero them
    (``zero_out_masked``), so zeros are the padding that adds no prompt content.
    """
    conditioning = Conditioning.of(conditioning)
    have = int(conditioning.context.shape[1])
    if have == tokens:
        return conditioning
    if have > tokens:
        context = conditioning.context[:, :tokens]
    else:
        context = torch.nn.functional.pad(conditioning.context, (0, 0, 0, tokens - have))
    return Conditioning(context, conditioning.pooled)


def components_dtype(family: str) -> torch.dtype:
    """The dtype of the components of a distribution fitted for ``family``."""
    return torch.float16 if family in FLOAT16_COMPONENT_FAMILIES else torch.float32


def fit_memory_bound(n_prompts: int, features: int, n_components: int, component_bytes: int = 4) -> int:
    """Upper bound, in bytes, of the host memory the fit itself takes beyond its input rows (for
    :meth:`ConditionSampler.fit_from_prompts` the rows are on disk, so this is all of it), for
    ``n_prompts <= EXACT_FIT_MAX_ROWS`` and ``n_prompts <= features`` (text encoders: F >= 59,136):

    - the components being formed, ``k x F x component_bytes`` (the dominant term: 0.65 GB for
      SD 3.5's 512 x 632,832 in float16, 0.33 GB for SDXL's 512 x 158,976 in float32);
    - the mean and a column chunk of mean-sized work, ``2 x F x 8``;
    - the N x N float64 Gram matrix and its eigendecomposition (eigenvectors and LAPACK's
      workspace): ``4 x N^2 x 8`` (0.18 GB for N = 2,400);
    - one column chunk of the rows read (float32) and centred (float64, and the centred copy):
      ``N x 4096 x 20`` (0.20 GB for N = 2,400), and one ``k x 4096`` float64 chunk of components
      with its scaled copy;
    - a fixed 256 MiB for what the C libraries keep: BLAS/LAPACK working buffers and blocks the
      allocator holds on to after they are freed (40 to 60 MB measured on Linux).

    Measured against this by benchmarks/conditions_memory.py."""
    k = max(1, min(n_components, n_prompts - 1, features))
    side = min(n_prompts, features)
    return (
        k * features * component_bytes
        + 2 * features * 8
        + 4 * side * side * 8
        + n_prompts * _FIT_CHUNK * 20
        + 2 * k * _FIT_CHUNK * 8
        + _FIT_LIBRARY_OVERHEAD
    )


# --- the distribution ----------------------------------------------------------------------------


class ConditionSampler:
    """A Gaussian over text-encoder conditions, in the PCA space of a prompt list's embeddings.

    Fitted with :meth:`fit` (embeddings) or :meth:`fit_from_prompts` (an encode function), saved
    and loaded as a ``conditions`` safetensors file. All tensors are float32 except the components
    of :data:`FLOAT16_COMPONENT_FAMILIES`:

    - ``mean``: ``[F]`` mean flattened conditioning, ``F = T * D + P`` (T tokens: 77 for the UNet
      families, 154 for SD 3.5, the fitted length for Z-Image; D the context width; P the pooled
      width: 0, 1280 for SDXL, 2048 for SD 3.5).
    - ``components``: ``[k, F]`` orthonormal principal directions, largest variance first
      (float16 for the transformer families: 0.65 GB in the file for SD 3.5 and 512 components).
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
        prompt_tokens: Sequence[int] | None = None,
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
        self.components = components if components.dtype == torch.float16 else components.float()
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
        #: (shortest, longest) token count of the fitted prompts before they were brought to one
        #: length (:data:`VARIABLE_LENGTH_FAMILIES`), else None.
        self.prompt_tokens = None if prompt_tokens is None else tuple(int(t) for t in prompt_tokens)

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
            self.prompt_tokens,
        )

    @property
    def token_length(self) -> int:
        """The token count of every draw (and of the pivot, once brought to it)."""
        return self.embedding_shape[0]

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

        The rows are held in memory here (they are the input); :meth:`fit_from_prompts` streams
        them to a temporary file instead. Either way the fit itself never builds a centred copy:
        with N <= F (the usual case: 2,400 prompts vs F = 77 * 768 = 59,136) it eigendecomposes the
        N x N Gram matrix of the centred rows, accumulated in float64 over column chunks, then
        forms the components chunk by chunk straight into the stored dtype; the memory beyond the
        rows is :func:`fit_memory_bound`. The result is an exact SVD and does not depend on
        ``seed``. Only above EXACT_FIT_MAX_ROWS prompts (with F larger still) does it use a
        randomized SVD, seeded with ``seed``.
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
        rows = embeddings.flatten().detach()
        if rows.device.type != "cpu":
            rows = rows.cpu()
        if rows.dtype != torch.float64:
            rows = rows.float()  # fp16/bf16 matmuls on CPU are slow and inaccurate
        if not torch.isfinite(rows).all():
            raise InvalidInputError("prompt embeddings contain NaN or infinity; check the text encoder")
        return cls._fit_rows(
            _TensorRows(rows),
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
        rows: _TensorRows | _RowFile,
        embedding_shape: tuple[int, int],
        pooled_dim: int,
        n_components: int,
        seed: int,
        text_encoder_fingerprint: str,
        family: str,
        notice: str = "",
        prompt_tokens: Sequence[int] | None = None,
    ) -> ConditionSampler:
        """:meth:`fit` on the flattened conditionings of ``rows`` (``[N, T * D + P]``, read a
        column chunk at a time)."""
        n_prompts, features = rows.shape
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
        dtype = components_dtype(family)
        with torch.no_grad():
            possible = min(n_prompts - 1, features)
            wanted = min(n_components, possible)
            mean = _column_mean(rows)
            if min(n_prompts, features) <= EXACT_FIT_MAX_ROWS:
                components, eigenvalues, score_mean = _exact_pca(rows, mean, wanted, dtype)
            else:
                components, eigenvalues = _randomized_pca(rows, mean, wanted, seed, dtype)
                score_mean = _score_mean(rows, mean, components)
        kept = components.shape[0]
        if kept < 1:
            raise InvalidInputError(
                f"all {n_prompts} prompts of the prompt list encode to the same embedding; use varied prompts."
            )
        notices = [_fit_notice(n_components, kept, wanted, n_prompts, features), notice]
        return cls(
            mean=mean.float(),
            components=components,
            score_mean=score_mean.float(),
            variance=(eigenvalues / (n_prompts - 1)).float(),
            embedding_shape=(tokens, dim),
            n_prompts=n_prompts,
            n_components_requested=n_components,
            text_encoder_fingerprint=text_encoder_fingerprint,
            notice=" ".join(text for text in notices if text),
            pooled_dim=pooled_dim,
            family=family,
            prompt_tokens=prompt_tokens,
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
        token_length: int | None = None,
        store_dir: str | os.PathLike | None = None,
    ) -> ConditionSampler:
        """Encode each prompt with ``encode`` (``str -> Conditioning``, or ``Tensor[1, T, D]``
        without a pooled part; any device/dtype) and :meth:`fit` the embeddings. ``family`` is the
        backbone family of ``encode``'s text encoder(s) (``backend.spec.family``), which the file
        records so that a sampler fitted on one family's CLIP is refused by another's model.

        Token length: the UNet families, SD 3.5 and Flux.1 encode every prompt of the list to one
        length (77 tokens, SD 3.5's 77 CLIP + 77 T5, Flux.1's 256 T5), and a prompt that encodes
        longer (over 75 CLIP tokens, or T5's minimum length) is refused, naming it and the rule.
        :data:`VARIABLE_LENGTH_FAMILIES` (Z-Image) encode each prompt to its own token count; their
        prompts are brought to one length T by :func:`to_token_length` (the first T tokens kept,
        zero tokens after a shorter prompt's own), with T = ``token_length`` or, by default, the
        longest prompt's count (nothing truncated). T is the file's ``embedding_shape[0]`` (also
        written as ``token_length``, with the prompts' own range as ``prompt_tokens``) and the length
        of every draw; the example's prompt (the pivot) is brought to T the same way.

        Memory: each embedding goes, as it is encoded, to an unnamed temporary file (float32, at its
        own length; in ``store_dir`` or the system's temporary folder; removed on every exit path:
        N x F x 4 bytes of disk, 6.1 GB for SD 3.5 and the default list). The fit reads it back a
        column chunk at a time, so its host memory is :func:`fit_memory_bound` (N = 2,400 prompts,
        512 components: 0.75 GiB for SD 1.x, 0.94 GiB for SDXL, 1.25 GiB for SD 3.5 with its
        float16 components) plus the text encoder's own, instead of the N x F float32 rows (0.53,
        1.4 and 5.7 GiB) and the k x F components in float64 and float32 (0.34, 0.91 and 3.6 GiB).
        benchmarks/conditions_memory.py measures it.

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
        variable = family in VARIABLE_LENGTH_FAMILIES
        if token_length is not None:
            if not variable:
                raise InvalidInputError(
                    f"token_length applies to the families whose text encoder gives each prompt its own length "
                    f"({', '.join(family_name(f) for f in VARIABLE_LENGTH_FAMILIES)}); the {family_name(family)} "
                    "encoder gives every prompt of the list one length. Leave token_length unset."
                )
            if int(token_length) < 1:
                raise InvalidInputError(f"token_length must be at least 1 token, got {token_length}")
        total = len(prompts)
        with _RowFile(store_dir) as rows:
            first: tuple[int, int, int] | None = None  # tokens, dim, pooled_dim of the first prompt
            for index, prompt in enumerate(prompts):
                if should_stop is not None and should_stop():
                    raise TrainingInterrupted(
                        f"fitting the CDST condition distribution was cancelled after {index} of {total} prompts"
                    )
                embedding = _as_single_embedding(encode(prompt), prompt)
                this = (*(int(s) for s in embedding.context.shape[1:]), embedding.pooled_dim)
                if first is None:
                    first = this
                elif this[1:] != first[1:] or (not variable and this != first):
                    gave = f"context [1, {first[0]}, {first[1]}]{f' + pooled [1, {first[2]}]' if first[2] else ''}"
                    if variable or this[1:] != first[1:]:
                        fix = "the text encoder changed during the fit: use one CLIP for the whole list."
                    else:
                        # the longer of the two is the one to shorten: the first prompt may be it
                        longer = f"prompt {index + 1}" if this[0] > first[0] else f"prompt 1 {prompts[0]!r}"
                        fix = (
                            f"the {family_name(family)} text encoders give every prompt of the list one length, and "
                            f"{longer_context_hint(family)}: shorten {longer} or remove it from the list."
                        )
                    raise InvalidInputError(
                        f"prompt {index + 1} {prompt!r} encodes to {embedding.describe()}, but earlier prompts gave "
                        f"{gave}; {fix}"
                    )
                rows.append(embedding, prompt)
                if progress is not None:
                    progress(index + 1, total)
            _, dim, pooled_dim = first
            lengths = rows.tokens
            tokens = int(token_length) if token_length is not None else max(lengths)
            rows.token_length = tokens
            notice = ""
            truncated = sum(length > tokens for length in lengths)
            if truncated:
                notice = (
                    f"{truncated} of {total} prompts are longer than the {tokens} tokens fitted and were cut to their "
                    f"first {tokens} (the longest has {max(lengths)})."
                )
            return cls._fit_rows(
                rows,
                (tokens, dim),
                pooled_dim,
                n_components,
                seed,
                text_encoder_fingerprint,
                family,
                notice=notice,
                prompt_tokens=(min(lengths), max(lengths)) if variable else None,
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
        if self.components.dtype == torch.float32:
            flat = torch.addmm(self.mean.unsqueeze(0), scores, self.components)
        else:  # float16 components: multiplied in float32 a chunk at a time, not converted whole
            flat = self.mean.unsqueeze(0).repeat(n, 1)
            for cols in _column_chunks(self.components.shape[1]):
                flat[:, cols].addmm_(scores, self.components[:, cols].float())
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
        For :data:`VARIABLE_LENGTH_FAMILIES` the pivot is first brought to :attr:`token_length` as
        the fitted prompts were (:func:`to_token_length`).
        """
        self.check_pivot(pivot)
        return blend(self.at_token_length(pivot), self.sample(generator, 1), iteration, h_iter)

    def at_token_length(self, conditioning: Conditioning | torch.Tensor) -> Conditioning:
        """``conditioning`` at the fitted token length where the family's prompts vary in length
        (:data:`VARIABLE_LENGTH_FAMILIES`); unchanged otherwise."""
        if self.family in VARIABLE_LENGTH_FAMILIES:
            return to_token_length(conditioning, self.token_length)
        return Conditioning.of(conditioning)

    def check_pivot(self, pivot: Conditioning | torch.Tensor) -> None:
        """Raise unless ``pivot`` (the example's prompt) fits this distribution: the same width and
        pooled part and, where prompts vary in length, no more tokens than were fitted (a longer
        pivot would lose its last tokens; a shorter one is padded as the fitted prompts were)."""
        pivot = Conditioning.of(pivot)
        tokens = int(pivot.context.shape[1])
        if self.family in VARIABLE_LENGTH_FAMILIES and tokens > self.token_length:
            raise InvalidInputError(
                f"the example's prompt encodes to {tokens} tokens, more than the {self.token_length} the condition "
                f"distribution was fitted at ({family_name(self.family)}): shorten the prompt to at most "
                f"{self.token_length} tokens, or fit the conditions again at a token length of {tokens} or more."
            )
        pivot = self.at_token_length(pivot)
        width, fitted = int(pivot.context.shape[2]), self.embedding_shape[0]
        same_encoder = width == self.embedding_shape[1] and pivot.pooled_dim == self.pooled_dim
        if same_encoder and int(pivot.context.shape[1]) != fitted:  # a fixed-length family's longer prompt
            raise InvalidInputError(
                f"the example's prompt encodes to {tokens} tokens where the condition distribution was fitted at "
                f"{fitted} ({family_name(self.family)}), and {longer_context_hint(self.family)}: shorten the example's "
                f"prompt to the fitted prompts' length, or fit the conditions on prompts of its length."
            )
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
        header = {
            "n_prompts": self.n_prompts,
            "n_components": self.n_components,
            "n_components_requested": self.n_components_requested,
            "embedding_shape": list(self.embedding_shape),
            "pooled_dim": self.pooled_dim,
            "family": self.family,
            "text_encoder_fingerprint": self.text_encoder_fingerprint,
            "notice": self.notice,
        }
        if self.prompt_tokens is not None:  # the UNet families' files keep the keys they had
            header["token_length"] = self.token_length
            header["prompt_tokens"] = list(self.prompt_tokens)
            header["token_padding"] = (
                "first token_length tokens kept; zero tokens after a shorter prompt's own"
            )
        return header

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
                prompt_tokens=header.get("prompt_tokens"),
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


class _TensorRows:
    """The flattened conditionings held in memory (:meth:`ConditionSampler.fit`), read by columns."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.shape = (int(rows.shape[0]), int(rows.shape[1]))

    def columns(self, cols: slice) -> torch.Tensor:
        return self.rows[:, cols]


class _RowFile:
    """Prompt embeddings streamed, as they are encoded, to an unnamed temporary file (float32, each at
    its own token count), read back a column chunk at a time at one token length ``token_length``:
    a row's first ``token_length`` tokens, zeros after a shorter row's own (:func:`to_token_length`),
    then its pooled part. Only one ``[N, chunk]`` block of the rows is ever in memory.

    Reads go through ``readinto`` rather than a memory map, so the file's pages stay in the system's
    cache and are not counted in (or held by) the process's memory. The file is deleted when the
    context ends, on every exit path."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        self._file = tempfile.TemporaryFile(dir=self.directory)
        self._end = 0
        self.offsets: list[int] = []
        #: each row's own token count
        self.tokens: list[int] = []
        self.dim = 0
        self.pooled_dim = 0
        self.token_length = 0

    def __enter__(self) -> _RowFile:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def append(self, embedding: Conditioning, prompt: str) -> None:
        values = embedding.flatten()[0].detach().to(device="cpu", dtype=torch.float32).contiguous()
        if not torch.isfinite(values).all():
            raise InvalidInputError(
                f"the embedding of prompt {prompt!r} contains NaN or infinity; check the text encoder"
            )
        self.dim, self.pooled_dim = int(embedding.context.shape[2]), embedding.pooled_dim
        self._file.seek(self._end)
        try:
            self._write(values.numpy().tobytes())
        except OSError as e:
            raise OSError(
                f"could not store the embedding of prompt {len(self.offsets) + 1} ({self._end / 2**30:.2f} GiB "
                f"written so far) in the temporary folder {self.directory}: {e.strerror or e}. Fitting "
                "the conditions needs prompts x values x 4 bytes of disk there (6.1 GB for SD 3.5 and the built-in "
                "list); free space or point TMPDIR (or store_dir) to a folder with room."
            ) from e
        self.offsets.append(self._end)
        self.tokens.append(int(embedding.context.shape[1]))
        self._end += values.numel() * 4

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.offsets), self.token_length * self.dim + self.pooled_dim

    def columns(self, cols: slice) -> torch.Tensor:
        values = np.zeros((len(self.offsets), cols.stop - cols.start), dtype=np.float32)  # padding stays zero
        context_width = self.token_length * self.dim
        for row, (offset, tokens) in enumerate(zip(self.offsets, self.tokens, strict=True)):
            # context values the row has in this chunk (the rest of the context part stays zero)
            stop = min(cols.stop, min(tokens, self.token_length) * self.dim)
            if stop > cols.start:
                self._read(values[row, : stop - cols.start], offset + cols.start * 4)
            start = max(cols.start, context_width)  # then the pooled values, stored after the row's context
            if start < cols.stop:
                stored = offset + (tokens * self.dim + start - context_width) * 4
                self._read(values[row, start - cols.start :], stored)
        return torch.from_numpy(values)

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def _read(self, into, position: int) -> None:
        self._file.seek(position)
        buffer = memoryview(into).cast("B")
        if self._file.readinto(buffer) != len(buffer):
            raise OSError("the temporary file of prompt embeddings was cut short while fitting")


def _column_mean(rows) -> torch.Tensor:
    mean = torch.empty(rows.shape[1], dtype=torch.float64)
    for cols in _column_chunks(rows.shape[1]):
        mean[cols] = rows.columns(cols).double().mean(dim=0)
    return mean


def _centred(rows, mean: torch.Tensor, cols: slice) -> torch.Tensor:
    return rows.columns(cols).double() - mean[cols]


def _keep_nonzero(eigenvalues: torch.Tensor, vectors: torch.Tensor, wanted: int):
    """Largest ``wanted`` eigenpairs (descending), without numerically-zero ones."""
    order = torch.argsort(eigenvalues, descending=True)[:wanted]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    top = float(eigenvalues[0]) if eigenvalues.numel() else 0.0
    if top <= 0.0:  # every prompt gave the same embedding
        return eigenvalues[:0], vectors[:, :0]
    keep = eigenvalues > top * _RELATIVE_EIGENVALUE_FLOOR
    return eigenvalues[keep], vectors[:, keep]


class _SignPivots:
    """Eigenvectors are defined up to sign: each component's largest-magnitude entry is made
    positive, so that the same data always gives the same components. Fed the components a column
    chunk at a time (in float64, before they are stored at a lower precision); the first entry of
    largest magnitude decides, as ``argmax`` would over the whole row."""

    def __init__(self, k: int) -> None:
        self.magnitude = torch.full((k,), -1.0, dtype=torch.float64)
        self.value = torch.zeros(k, dtype=torch.float64)

    def update(self, chunk: torch.Tensor) -> None:
        if chunk.shape[1] == 0:
            return
        index = chunk.abs().argmax(dim=1, keepdim=True)
        value = chunk.gather(1, index)[:, 0].double()
        larger = value.abs() > self.magnitude
        self.magnitude = torch.where(larger, value.abs(), self.magnitude)
        self.value = torch.where(larger, value, self.value)

    def signs(self) -> torch.Tensor:
        signs = torch.sign(self.value)
        signs[signs == 0] = 1
        return signs


def _signed(components: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``components`` with each row multiplied by its sign, in place (no second k x F copy)."""
    for cols in _column_chunks(components.shape[1]):
        components[:, cols] *= signs.to(components.dtype).unsqueeze(1)
    return components


def _exact_pca(rows, mean: torch.Tensor, wanted: int, dtype: torch.dtype):
    """Exact PCA by eigendecomposition of the smaller of the two Gram matrices (float64).

    Returns ``(components [k, F] in dtype, eigenvalues [k], score_mean [k])``; the components are
    formed and stored a column chunk at a time."""
    n, features = rows.shape
    if n <= features:
        gram = torch.zeros((n, n), dtype=torch.float64)
        for cols in _column_chunks(features):
            block = _centred(rows, mean, cols)
            gram.addmm_(block, block.T)
        eigenvalues, vectors = torch.linalg.eigh(gram)
        del gram
        eigenvalues, vectors = _keep_nonzero(eigenvalues, vectors, wanted)
        # Right singular vectors: V^T = U^T Xc / s, built a column chunk at a time; the prompts'
        # mean score (their centred sum, projected) comes with them.
        singular = eigenvalues.sqrt()
        components = torch.empty((vectors.shape[1], features), dtype=dtype)
        pivots = _SignPivots(vectors.shape[1])
        score_total = torch.zeros(vectors.shape[1], dtype=torch.float64)
        for cols in _column_chunks(features):
            block = _centred(rows, mean, cols)
            chunk = (vectors.T @ block) / singular.unsqueeze(1)
            pivots.update(chunk)
            score_total += block.sum(dim=0) @ chunk.T
            components[:, cols] = chunk
        signs = pivots.signs()
        return _signed(components, signs), eigenvalues, score_total * signs / n
    whole = rows.columns(slice(0, features))  # F < N: the rows are narrower than the F x F covariance
    covariance = torch.zeros((features, features), dtype=torch.float64)
    for start in range(0, n, _FIT_CHUNK):
        block = whole[start : start + _FIT_CHUNK].double() - mean
        covariance.addmm_(block.T, block)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    eigenvalues, vectors = _keep_nonzero(eigenvalues, vectors, wanted)
    components = vectors.T.contiguous()
    pivots = _SignPivots(components.shape[0])
    pivots.update(components)
    components = _signed(components, pivots.signs())
    return components.to(dtype), eigenvalues, _score_mean(rows, mean, components)


def _randomized_pca(
    rows,
    mean: torch.Tensor,
    wanted: int,
    seed: int,
    dtype: torch.dtype,
    oversample: int = 16,
    power_iterations: int = 4,
):
    """Randomized SVD (Halko et al.) of the centred rows without forming them: products with
    ``Xc = X - 1 m^T`` are done a column chunk at a time as ``X @ v - 1 (m . v)``; seeded, so
    deterministic. Holds three ``F x (k + oversample)`` float32 matrices besides the components."""
    n, features = rows.shape
    width = min(wanted + oversample, n, features)
    generator = torch.Generator().manual_seed(int(seed))
    mean32 = mean.float()

    def times(matrix):  # Xc @ matrix, matrix [F, w]
        product = torch.zeros((n, matrix.shape[1]), dtype=torch.float32)
        for cols in _column_chunks(features):
            product.addmm_(rows.columns(cols), matrix[cols])
        return product - (mean32 @ matrix).unsqueeze(0)

    def times_transposed(matrix):  # Xc^T @ matrix, matrix [n, w]
        product = torch.empty((features, matrix.shape[1]), dtype=torch.float32)
        sums = matrix.sum(dim=0, keepdim=True)
        for cols in _column_chunks(features):
            product[cols] = rows.columns(cols).T @ matrix - mean32[cols].unsqueeze(1) * sums
        return product

    basis = torch.linalg.qr(times(torch.randn((features, width), generator=generator))).Q
    for _ in range(power_iterations):
        basis = torch.linalg.qr(times_transposed(basis)).Q
        basis = torch.linalg.qr(times(basis)).Q
    # Xc ~= Q B with B = Q^T Xc [w, F]; its exact PCA comes from the small w x w Gram matrix.
    projected = times_transposed(basis).T
    gram = torch.zeros((width, width), dtype=torch.float64)
    for cols in _column_chunks(features):
        part = projected[:, cols].double()
        gram.addmm_(part, part.T)
    eigenvalues, vectors = torch.linalg.eigh(gram)
    eigenvalues, vectors = _keep_nonzero(eigenvalues, vectors, wanted)
    singular = eigenvalues.sqrt()
    components = torch.empty((vectors.shape[1], features), dtype=dtype)
    pivots = _SignPivots(vectors.shape[1])
    for cols in _column_chunks(features):
        chunk = (vectors.T @ projected[:, cols].double()) / singular.unsqueeze(1)
        pivots.update(chunk)
        components[:, cols] = chunk
    return _signed(components, pivots.signs()), eigenvalues


def _score_mean(rows, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(components.shape[0], dtype=torch.float64)
    for cols in _column_chunks(rows.shape[1]):
        total += _centred(rows, mean, cols).sum(dim=0) @ components[:, cols].double().T
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
