"""HASTE: Hashing for Tractable Efficiency. Data-free, training-free channel merging for pre-trained
CNNs, with a run-time compression level per call.

FLOPs throughout are multiply-adds (torchvision's GFLOPS convention).
"""

from .convert import Conversion, conversion, convert, revert
from .flops import count_flops
from .levels import DEFAULT_LEVEL, LEVELS, MAX_HYPERPLANES, compression
from .module import HasteConv2d
from .profile import LayerStats, Report, profile

__all__ = [
    "LEVELS",
    "DEFAULT_LEVEL",
    "MAX_HYPERPLANES",
    "Conversion",
    "HasteConv2d",
    "LayerStats",
    "Report",
    "compression",
    "conversion",
    "convert",
    "count_flops",
    "profile",
    "revert",
]
__version__ = "0.1.0"
