"""Which model features were made with, beyond their layout: the record that travels with every
captured sample, features file, generator (file or in memory) and training checkpoint.

The layout (:class:`~diffsketch.capture.spec.FeatureSpec`) says whether a generator *can* run on a
model's features; the parameterisation says whether those features mean the same thing. The
same SDXL UNet read as epsilon-prediction or as v-prediction on a zero-terminal-SNR schedule
(ComfyUI's ModelSamplingDiscrete node, a NoobAI v-pred checkpoint) denoises along another path,
so its features at a timestep are not the ones a generator was trained on. A different
checkpoint with the same family and parameterisation (another fine-tune) is a legitimate use and
only gets a notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import FileFormatError, InvalidInputError
from .spec import SD1, check_backbone_family, family_name

PREDICTION_TYPES = ("epsilon", "v_prediction")
#: What the flow-matching transformers (Z-Image, SD 3.5, Flux.1) predict: the velocity of a
#: rectified-flow path (files record it as their prediction type).
FLOW_PREDICTION = "flow"
RECORDED_PREDICTION_TYPES = (*PREDICTION_TYPES, FLOW_PREDICTION)
_PREDICTION_NAMES = {
    "epsilon": "epsilon-prediction",
    "v_prediction": "v-prediction",
    FLOW_PREDICTION: "flow-matching velocity prediction",
}

#: What files written before the record existed are taken to be, per family. Every SD 1.x
#: checkpoint DiffSketch knows is epsilon-prediction on SD's schedule; SD 2.x (768-v) and SDXL
#: (NoobAI v-pred, through ModelSamplingDiscrete) were already used both ways, so for them the
#: old file's parameterisation is unknown (None) and is not checked, only reported.
_UNRECORDED_DEFAULTS = {SD1: ("epsilon", False)}


@dataclass(frozen=True)
class ModelIdentity:
    """``family`` (``sd1``, ``sd2``, ``sdxl``, ``zimage``, ``sd35``), ``prediction_type``
    (``epsilon`` or ``v_prediction``; ``flow`` for the flow families), ``zero_terminal_snr`` (the schedule rescaled so its last step is pure
    noise) and ``model_hash`` (the UNet's weights fingerprint, with its LoRA patches). None: not
    recorded (a file written before this record existed); unknown parts are never refused."""

    family: str
    prediction_type: str | None
    zero_terminal_snr: bool | None
    model_hash: str | None = None

    def to_dict(self) -> dict:
        """The header fields (the same keys in every file kind)."""
        return {
            "family": self.family,
            "prediction_type": self.prediction_type,
            "zero_terminal_snr": self.zero_terminal_snr,
            "model_hash": self.model_hash,
        }

    @classmethod
    def from_dict(cls, record: Mapping | None, family: str, where: str) -> ModelIdentity:
        """The identity a header records; ``family`` is the one the file's spec records. Fields a
        record written before they existed lacks take :data:`_UNRECORDED_DEFAULTS` (or None); no
        record at all (``None``: e.g. a generator built in memory) leaves them all unknown."""
        recorded = isinstance(record, Mapping)
        record = record if recorded else {}
        family = check_backbone_family(record.get("family") or family, where)
        default_prediction, default_zsnr = (
            _UNRECORDED_DEFAULTS.get(family, (None, None)) if recorded else (None, None)
        )
        prediction = record.get("prediction_type", default_prediction)
        zsnr = record.get("zero_terminal_snr", default_zsnr)
        if prediction is not None and prediction not in RECORDED_PREDICTION_TYPES:
            raise FileFormatError(
                f"{where} records the prediction type {prediction!r}, which is none of "
                f"{list(RECORDED_PREDICTION_TYPES)}; "
                "the file is damaged or was written by a newer version of DiffSketch."
            )
        if zsnr is not None and not isinstance(zsnr, bool):
            raise FileFormatError(f"{where} records zero_terminal_snr={zsnr!r}, which is not true or false.")
        model_hash = record.get("model_hash")
        return cls(family, prediction, zsnr, str(model_hash) if model_hash else None)

    def parameterisation(self) -> str:
        """E.g. ``"v-prediction on a zero-terminal-SNR schedule"``, ``"epsilon-prediction"``."""
        prediction = _PREDICTION_NAMES.get(self.prediction_type, "an unrecorded prediction type")
        if self.zero_terminal_snr is None:
            return f"{prediction} (zero-terminal-SNR not recorded)"
        return f"{prediction} on a zero-terminal-SNR schedule" if self.zero_terminal_snr else prediction

    def unknown(self) -> list[str]:
        return [
            name
            for name, value in (
                ("prediction type", self.prediction_type),
                ("zero-terminal-SNR flag", self.zero_terminal_snr),
            )
            if value is None
        ]


def backend_identity(backend) -> ModelIdentity:
    """The identity of the model a sampling backend runs. A backend identifies its weights with
    ``model_hash`` (a string or a method returning one) where it can."""
    model_hash = getattr(backend, "model_hash", None)
    if callable(model_hash):
        model_hash = model_hash()
    return ModelIdentity(
        backend.spec.family,
        getattr(backend, "prediction_type", "epsilon"),
        bool(getattr(backend, "zero_terminal_snr", False)),
        str(model_hash) if model_hash else None,
    )


def check_same_model(
    found: ModelIdentity, expected: ModelIdentity, found_what: str, expected_what: str, fix: str
) -> list[str]:
    """Refuse ``found`` (what a file or an in-memory object was made with) on ``expected`` (the
    model in use) when their prediction types or zero-terminal-SNR flags differ: the error names
    both parameterisations and ``fix``. Returns notices for what is allowed but worth saying:
    another checkpoint of the same family and parameterisation, or a record too old to check.
    Families are checked before this, by :func:`~diffsketch.capture.spec.check_family`."""
    differs = (
        None not in (found.prediction_type, expected.prediction_type)
        and found.prediction_type != expected.prediction_type
    ) or (
        None not in (found.zero_terminal_snr, expected.zero_terminal_snr)
        and found.zero_terminal_snr != expected.zero_terminal_snr
    )
    if differs:
        raise InvalidInputError(
            f"{found_what} was made with {found.parameterisation()}, but {expected_what} samples "
            f"{expected.parameterisation()}: features of one do not mean the same as features of the other. {fix}."
        )
    notices = []
    unknown = found.unknown()
    if unknown:
        notices.append(
            f"{found_what} does not record its model's {' or '.join(unknown)} (a file of an earlier version?), so it "
            f"cannot be checked against {expected_what} ({expected.parameterisation()}); if they differ the "
            "results will be wrong"
        )
    if found.model_hash and expected.model_hash and found.model_hash != expected.model_hash:
        notices.append(
            f"{found_what} was made with another {family_name(expected.family)} checkpoint (weights "
            f"{found.model_hash}) than {expected_what} (weights {expected.model_hash}); both are "
            f"{expected.parameterisation()}, so this works, but results follow the checkpoint in use"
        )
    return notices
