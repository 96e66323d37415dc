"""Example-sketch styles: the automatic extractors that make DiffSketch's example sketch and the
ground truth of its evaluation -- XDoG (:mod:`.xdog`), the paper's modified HED (:mod:`.hed`) and
Informative Drawings (:mod:`.informative`); :mod:`.registry` names them and loads their weights.
"""

from .base import StyleExtractor
from .hed import DIFFSKETCH_HED_SIDES, HED_BGR_MEAN, STANDARD_HED_SIDES, ModifiedHED
from .informative import InformativeDrawings
from .registry import (
    STYLE_WEIGHTS_KIND,
    STYLES,
    StyleInfo,
    build_style,
    load_style,
    resolve_style_weights,
    save_style_weights,
)
from .xdog import XDoGStyle

__all__ = [
    "STYLES",
    "STYLE_WEIGHTS_KIND",
    "StyleInfo",
    "StyleExtractor",
    "XDoGStyle",
    "ModifiedHED",
    "InformativeDrawings",
    "build_style",
    "load_style",
    "save_style_weights",
    "resolve_style_weights",
    "HED_BGR_MEAN",
    "DIFFSKETCH_HED_SIDES",
    "STANDARD_HED_SIDES",
]
