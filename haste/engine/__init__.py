"""Execution engines for the HASTE convolution, chosen per call by device and autograd state:

- ``cpu``: a fused C++ kernel (haste_cpu.cpp), compiled on first use with torch's cpp_extension (gcc,
  OpenMP, MKL's sgemm through libtorch), parallel over tiles. Used for float32 CPU inference.
- ``triton``: for CUDA tensors without gradients when Triton is installed: torch ops for hashing and
  bucketing on the device and one fused Triton kernel for the merged convolution (triton_gpu.py).
- ``reference``: the vectorised PyTorch implementation (haste/functional.py). Used when gradients are
  needed, for CPU dtypes other than float32, on CUDA without Triton, or when the CPU kernel cannot be
  built (the reason is kept in ``engine.unavailable``).

Both give the same codes, buckets and outputs (tests/test_engine.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from ..functional import Result, check_merge, haste_conv2d
from ..tiles import output_size

_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only"]
_lock = threading.Lock()
_module = None
unavailable: str | None = None


def _build(variant: str, flags: list[str]):
    """Compile (cached by torch in TORCH_EXTENSIONS_DIR) and import haste_cpu.cpp built with ``flags``.

    The build is named by a hash of what goes into it (the source's path and text, the flags, this torch and
    this Python environment): checkouts and virtual environments sharing one cache directory each keep their
    own build instead of recompiling one another's on every switch.
    """
    source = Path(__file__).with_name("haste_cpu.cpp")
    name = build_name(variant, flags)
    flags = _with_namespace(variant, flags)
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    quiet = _DropCudaHomeNotice()  # said on import by a CUDA build of torch on a machine without CUDA: moot here
    cpp_log.addFilter(quiet)
    try:
        from torch.utils.cpp_extension import load

        module = load(name, [str(source)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        module.operators = getattr(torch.ops, f"haste{variant}")  # torch.ops.haste.conv2d: traced_conv2d
        return module
    finally:
        cpp_log.removeFilter(quiet)


def _with_namespace(variant: str, flags: list[str]) -> list[str]:
    """``flags`` and the namespace of the build's torch operator, ``haste<variant>``: one per build in a process."""
    return [*flags, f"-DHASTE_OPS=haste{variant}"]


def build_name(variant: str, flags: list[str]) -> str:
    """The extension's name (and build directory): ``haste_cpu<variant>_<hash of what goes into the build>``."""
    source = Path(__file__).with_name("haste_cpu.cpp")
    key = "\0".join([str(source), source.read_text(), *_with_namespace(variant, flags), torch.__version__, sys.prefix])
    return f"haste_cpu{variant}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class _DropCudaHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def env_setting() -> str:
    """HASTE_ENGINE, lower-cased: "" (unset or empty), "auto" (the same) or "reference" (never build or use the
    fused CPU kernel); ValueError for anything else, so that a typo does not pass for the default."""
    setting = os.environ.get("HASTE_ENGINE", "")
    if setting.lower() not in ("", "auto", "reference"):
        raise ValueError(
            "HASTE_ENGINE must be unset, auto (the fused CPU kernel where it applies) or reference (never "
            f"build or use the fused CPU kernel); got {setting!r}"
        )
    return setting.lower()


def _load():
    """The CPU kernel, compiled once per machine, checkout and environment; None (reason in ``unavailable``)
    when it cannot be built or HASTE_ENGINE=reference; ValueError for another HASTE_ENGINE than unset, empty,
    auto or reference (case-insensitive)."""
    global _module, unavailable
    if _module is not None or unavailable is not None:
        return _module
    with _lock:
        if _module is None and unavailable is None:
            if env_setting() == "reference":
                unavailable = "disabled by HASTE_ENGINE=reference"
                return None
            try:
                _module = _build("", _CFLAGS)
            except Exception as exc:  # a missing compiler or headers: fall back, say why
                unavailable = f"{type(exc).__name__}: {exc}"
                logging.getLogger("haste").warning(
                    "fused CPU kernel unavailable, using the (slower) reference engine: %s", unavailable
                )
    return _module


#: The CPU kernel's stages (profiling build): per-tile stages in thread time summed over threads, then the calling
#: thread's wall time before the tile loop (padding, planes, allocations), after it (per-image sums) and of the loop.
TILE_STAGES = ("region", "hash", "bucket", "merge", "im2col", "filters", "gemm")
WALL_STAGES = ("prepare", "finish", "loop")
STAGES = TILE_STAGES + WALL_STAGES


def profiling_kernel():
    """The CPU kernel built with per-stage timers (-DHASTE_PROFILE), for ``haste bench --stages``."""
    return _build("_profile", [*_CFLAGS, "-DHASTE_PROFILE"])


@contextlib.contextmanager
def using_kernel(kernel) -> Iterator[None]:
    """Run the CPU engine with ``kernel`` (a build of haste_cpu.cpp, e.g. ``profiling_kernel()``) inside the
    block, for every thread; the usual build again after it. For measurement, not for serving."""
    global _module
    cpu_kernel_available()
    with _lock:
        saved, _module = _module, kernel
    try:
        yield
    finally:
        with _lock:
            _module = saved


def cpu_kernel_state() -> str:
    """``built``, ``unavailable`` (the reason in ``unavailable``) or ``not built`` (not asked for yet: the first
    HASTE forward on CPU, or ``cpu_kernel_available()``, builds it) — without building it."""
    if _module is not None:
        return "built"
    return "unavailable" if unavailable is not None else "not built"


triton_failed: str | None = None
"""Why the Triton engine failed at run time (e.g. no C compiler or no writable cache for Triton's driver
build), after which CUDA tensors use the reference engine; None while it works."""


def _triton_failed(exc: Exception) -> None:
    global triton_failed
    with _lock:
        if triton_failed is None:
            triton_failed = f"{type(exc).__name__}: {exc}"
            logging.getLogger("haste").error(
                "Triton engine failed, using the (slower) reference engine on CUDA from now on: %s", triton_failed
            )


def triton_available() -> bool:
    """Whether Triton can be imported (the CUDA engine's kernels)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_kernel_available() -> bool:
    """Whether the fused CPU kernel is built (building it on first call)."""
    return _load() is not None


ENGINES = ("cpu", "triton", "reference")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("haste_engine", default=None)


@contextlib.contextmanager
def forced(name: str) -> Iterator[None]:
    """Use engine ``name`` (one of ``ENGINES``) for the HASTE convs run in this context. ``reference`` and
    ``triton`` are used as asked; ``cpu`` is the automatic choice anyway and still needs float32 CPU
    tensors without gradients."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def choose(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The engine for this call: ``cpu``, ``triton`` or ``reference`` (see the module docstring)."""
    if runs_cpu(x, weight):
        return "cpu"
    return explain(x, weight)[0]


def runs_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``choose`` picks ``cpu`` for this call, answered without building a device object (x.device costs
    ~0.7 us, x.is_cpu ~0.06 us): the serving case, asked of every HASTE layer of every forward."""
    return (
        x.is_cpu and _module is not None and x.dtype is torch.float32 and weight.dtype is torch.float32
        and _forced.get() in (None, "cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )  # fmt: skip


def explain(x: torch.Tensor, weight: torch.Tensor) -> tuple[str, str | None]:
    """(the engine ``choose`` picks for this call, and when it is ``reference``, why no fused engine runs)."""
    forced_engine = _forced.get()
    if forced_engine in ("reference", "triton"):
        return forced_engine, "forced by haste.engine.forced" if forced_engine == "reference" else None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return "reference", "gradients are needed (the reference is the only differentiable engine)"
    device = x.device.type
    if device == "cuda":
        if triton_failed is not None:
            return "reference", triton_failed
        return ("triton", None) if triton_available() else ("reference", "Triton is not installed")
    if device != "cpu":
        return "reference", f"no fused engine for {device} tensors"
    if not x.dtype == weight.dtype == torch.float32:
        return "reference", f"the fused CPU kernel takes float32 (input {x.dtype}, weights {weight.dtype})"
    if _load() is None:
        return "reference", unavailable
    return "cpu", None


#: Output channels per panel of the CPU kernel's weight layout (kPanel in haste_cpu.cpp).
PANEL = 16


def weight_layout(weight: torch.Tensor) -> torch.Tensor:
    """The conv weight (O, C, kh, kw) laid out for the CPU kernel: panels of ``PANEL`` output channels,
    (ceil(O / PANEL), C, kh*kw, PANEL), zero beyond O, contiguous."""
    o, c, kh, kw = weight.shape
    panels = -(-o // PANEL)
    w = weight.detach().reshape(o, c, kh * kw)
    if panels * PANEL != o:
        w = torch.cat([w, w.new_zeros(panels * PANEL - o, c, kh * kw)])
    return w.reshape(panels, PANEL, c, kh * kw).permute(0, 2, 3, 1).contiguous()


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    patch: int,
    planes: torch.Tensor,
    engine: str | None = None,
    merge: str = "mean",
) -> Result:
    """HASTE convolution with the engine chosen by ``choose`` (or forced by ``engine``).

    The CPU engine returns the Result without geometry (``geometry=None``; compute it with
    ``haste.tiles.geometry`` if needed); ``HasteConv2d`` calls ``cpu_conv2d`` with cached operands.
    """
    engine = engine or choose(x, weight)
    if engine == "reference":
        return haste_conv2d(x, weight, bias, stride=stride, padding=padding, patch=patch, planes=planes, merge=merge)
    if engine == "triton":
        try:
            from .triton_gpu import conv2d as triton_conv2d

            return triton_conv2d(
                x, weight, bias, stride=stride, padding=padding, patch=patch, planes=planes, merge=merge
            )  # fmt: skip
        except Exception as exc:
            if _forced.get() == "triton":
                raise
            _triton_failed(exc)  # chosen automatically: fall back for this call and every later one
            return haste_conv2d(
                x, weight, bias, stride=stride, padding=padding, patch=patch, planes=planes, merge=merge
            )
    if engine != "cpu" or _load() is None:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)} (cpu unavailable: {unavailable}); got {engine!r}")
    kernel = tuple(weight.shape[2:])
    output_size(tuple(x.shape[2:]), kernel, stride, padding)  # ValueError, as the other engines
    y, groups, _ = cpu_conv2d(
        x,
        weight_layout(weight),
        EMPTY if bias is None else bias.detach(),
        planes.contiguous(),
        kernel, stride, padding, patch, check_merge(merge) == "scaled", weight.shape[0],
    )  # fmt: skip
    return Result(y, None, groups)


def cpu_conv2d(
    x, weight_t, bias, planes, kernel, stride, padding, patch, scaled, out_channels, scale=None
) -> list[torch.Tensor]:
    """The CPU kernel without checks or conversions: ``weight_t`` from ``weight_layout``, ``bias`` a
    detached tensor (``EMPTY`` for none), ``planes`` contiguous, the input size already checked
    (``tiles.output_size``); with ``scale`` (O,), the output is ``conv * scale + bias`` (a BatchNorm folded in:
    ``haste.fold``). Returns [channels-last output, buckets per tile, per-image sums (N, 2) as
    ``flops.tile_sums``]. The per-call fast path of ``HasteConv2d``; use ``conv2d`` otherwise."""
    return _module.haste_conv2d_cpu(
        x, weight_t, bias, planes, *kernel, *stride, *padding, patch, scaled, out_channels,
        EMPTY if scale is None else scale,
    )  # fmt: skip


EMPTY = torch.empty(0)


def traced_conv2d(
    x, weight_t, bias, planes, kernel, stride, padding, patch, scaled, out_channels, scale=None, *, sums=False
):
    """``cpu_conv2d``'s output through the kernel's torch operator, ``torch.ops.haste.conv2d``: what
    ``torch.jit.trace`` records for a HASTE layer (a traced model then runs the kernel; the operator is registered
    when the kernel is built: ``cpu_kernel_available()``). With ``sums``, (output, per-image sums (N, 2) float64:
    ``flops.tile_sums``' rows) through ``torch.ops.haste.conv2d_sums``."""
    op = _module.operators.conv2d_sums if sums else _module.operators.conv2d
    return op(
        x, weight_t, bias, planes, [*kernel, *stride, *padding, patch], scaled, out_channels,
        EMPTY if scale is None else scale,
    )  # fmt: skip


def kept_call(
    weight_t, bias, planes, kernel, stride, padding, patch, scaled, out_channels, scale, guards, entries, counted=None
):
    """A HASTE layer's call kept for its fast path: the CPU kernel's ``Call`` with ``cpu_conv2d``'s operands, which
    runs only while every (dict, key, object) of ``entries`` still holds that object and the ``guards`` tensors
    (the weight first) keep their version and data (see haste_cpu.cpp). ``call.run(x)`` returns None when a check
    fails, else the output; ``call.run(x, True)`` (output, per-image sums: ``haste.flops.tile_sums``' rows);
    ``call.run(x, sink)`` with a list the output, after appending ``(counted, sums, images)`` to ``sink`` (a
    profile's record of a forward: ``haste.profile``). Run it only while ``runs_kept(kernel)`` holds for the
    ``kernel`` (``current_kernel()``) it was made with."""
    return _module.Call(
        weight_t, bias, planes, [*kernel, *stride, *padding, patch], scaled, out_channels,
        EMPTY if scale is None else scale, guards, entries, counted,
    )  # fmt: skip


def current_kernel():
    """The CPU kernel's build in use (None before it is built): what ``runs_kept`` compares a kept call's with."""
    return _module


def runs_kept(kernel) -> bool:
    """Whether a call kept with ``kernel`` (``kept_call``) may run now: that build is still the one in use (not
    swapped by ``using_kernel``) and no other engine is forced in this context."""
    return kernel is _module and _forced.get() in (None, "cpu")
