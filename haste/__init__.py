"""HASTE: Hashing for Tractable Efficiency. Data-free, training-free channel merging for pre-trained
CNNs, with a run-time compression level per call.

FLOPs throughout are multiply-adds (torchvision's GFLOPS convention). ``haste.zoo`` (named models) is
imported on first use: it loads torchvision, which ``import haste`` does not need.
"""

from .convert import Conversion, conversion, convert, refresh, revert
from .counting import count_flops
from .fuse import fuse_batchnorm
from .levels import DEFAULT_LEVEL, LEVELS, MAX_HYPERPLANES, compression
from .module import HasteConv2d, Skip
from .options import Options
from .profile import LayerStats, Report, profile
from .trace import Traced, trace

__all__ = [
    "LEVELS",
    "DEFAULT_LEVEL",
    "MAX_HYPERPLANES",
    "Conversion",
    "HasteConv2d",
    "LayerStats",
    "Options",
    "Report",
    "Skip",
    "Traced",
    "compression",
    "conversion",
    "convert",
    "count_flops",
    "fuse_batchnorm",
    "profile",
    "refresh",
    "revert",
    "trace",
    "zoo",
]
__version__ = "0.1.0"

#: Subpackages imported on first attribute access (``haste.zoo.load(...)`` after ``import haste``).
_LAZY_SUBMODULES = ("zoo",)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also sets it as an attribute: called once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
