"""HasteConv2d: a drop-in wrapper around a pre-trained ``nn.Conv2d`` (kept unchanged as ``.conv``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from . import batchnorm as _batchnorm
from . import engine
from . import levels as _levels
from . import options as _options
from . import plans as _plans
from . import trace as _trace
from .flops import conv_flops, layer_constants, tile_sums
from .functional import conv_padding
from .lsh import sample_hyperplanes
from .profile import Counted, active
from .tiles import Geometry, geometry

_EXPORT_ERROR = (
    "HASTE layer {layer!r}: torch.export cannot capture HASTE layers at a level other than off. torch.jit.trace "
    "can, on the fused CPU kernel (float32 CPU inputs, no gradients: trace under torch.no_grad()), and "
    "torch.compile works; to export the dense model, export it at level off (inside haste.compression('off') the "
    "original convs are recorded) or after haste.revert(model)"
)
_TRACE_ERROR = (
    "HASTE layer {layer!r}: torch.jit.trace records HASTE layers at a level other than off only on the fused CPU "
    "kernel (float32 CPU inputs, no gradients: trace under torch.no_grad()); this call would run the {engine} "
    "engine{why}. torch.compile works on every engine; to trace the dense model, trace it at level off"
)
_Proxy = torch.fx.Proxy

#: A dense conv of an NCHW model (its weight NCHW-contiguous) whose input is the channels-last output of a HASTE
#: layer first makes it NCHW-contiguous when the map has at most this many pixels: oneDNN's conv on mixed layouts
#: is slower on small maps (fmnist-resnet34, batch 1, layer1+2 HASTE and the rest dense: 1.232 -> 1.009 of dense;
#: layer1-3 HASTE: 1.275 -> 1.102, one interleaved run). A channels-last model (``model.to(memory_format=
#: torch.channels_last)``, as the service runs it) keeps channels-last throughout.
_DENSE_NCHW_MAX_PIXELS = 64


#: (engine, level, batch size) keys a layer remembers the planned hyperplanes of (a forward looks its plan up once
#: per key; the lookup itself is what a level whose plan is dense costs over off).
_PLANNED_KEYS = 1024

#: (level, hyperplanes, input shape) keys a layer remembers its call for (``HasteConv2d._calls``: (the kernel's
#: kept ``Call`` or None for a dense call, the kernel build it was made with, whether the layer's BatchNorm runs
#: after it, ``Counted``)).
_CALL_KEYS = 64


def _weights_key(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What changes when a conv's weight or bias is edited in place (version counter) or given new data (``.data
    = ...`` moves the data pointer, not the version)."""
    return weight._version, weight.data_ptr(), None if bias is None else (bias._version, bias.data_ptr())


def _capturing() -> bool:
    """Whether torch.compile, torch.export or torch.jit.trace records this call (the fast path steps aside)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Pause torch.jit.trace's recording: sizes read are ints (traced, they are tensors, and comparing them warns
    that the trace might not generalise), tensors made are not recorded (they enter the trace as constants)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _channels_last_only(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


_SCRIPT_ERROR = (
    "HASTE layer {layer!r}: torch.jit.script cannot compile HASTE layers. torch.compile works; to script the dense "
    "model, script haste.revert(copy.deepcopy(model))"
)


@dataclass(frozen=True)
class Skip:
    """Why a conv stays dense: its ``kind`` ("depthwise conv"), a ``detail`` of this conv ("groups=32"; optional)
    and ``why`` that kind cannot be converted (optional). ``str()`` reads "kind (detail): why"."""

    kind: str
    detail: str | None = None
    why: str = ""

    def __str__(self) -> str:
        return (
            self.kind + (f" ({self.detail})" if self.detail is not None else "") + (f": {self.why}" if self.why else "")
        )


def unsupported(conv: nn.Module) -> Skip | None:
    """Why ``HasteConv2d`` cannot stand in for ``conv`` (None if it can): it must be an initialised nn.Conv2d
    whose forward is nn.Conv2d's own, without module hooks (the wrapper computes from the conv's weights without
    calling the module), with groups=1, dilation 1 and zero padding."""
    if not isinstance(conv, nn.Conv2d):
        return Skip("not an nn.Conv2d", type(conv).__name__, "HasteConv2d wraps 2-D convolutions only")
    if isinstance(conv, nn.modules.lazy.LazyModuleMixin) and conv.has_uninitialized_params():
        return Skip("uninitialised lazy conv", type(conv).__name__, "run one forward first so that its shape is known")
    for method in ("forward", "_conv_forward"):
        if getattr(type(conv), method) is not getattr(nn.Conv2d, method):
            return Skip(
                "custom forward", f"{type(conv).__qualname__}.{method}",
                "the wrapper computes from the weights and would bypass it",
            )  # fmt: skip
    hooks = [
        kind
        for kind, registered in (
            ("forward pre-hook", conv._forward_pre_hooks),
            ("forward hook", conv._forward_hooks),
            ("backward pre-hook", conv._backward_pre_hooks),
            ("backward hook", conv._backward_hooks),
        )
        if registered
    ]
    if hooks:
        return Skip(
            "module hooks", ", ".join(hooks), "the wrapper does not call the conv module, so they would not run"
        )
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return Skip(f"{kind} conv", f"groups={conv.groups}", "merging channels across groups breaks the grouping")
    if tuple(conv.dilation) != (1, 1):
        return Skip("dilated conv", f"dilation={tuple(conv.dilation)}", "tile regions assume dilation 1")
    if conv.padding_mode != "zeros":
        return Skip(f"padding_mode={conv.padding_mode!r}", why="only zero padding is supported")
    return None


def _state_dict_like_the_conv(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: the wrapped conv's entries under the wrapper's own prefix ("1.weight", not
    "1.conv.weight"), so a converted model saves the same keys as the original one."""
    inner = prefix + "conv."
    for key in [k for k in state_dict if k.startswith(inner)]:  # the wrapper's entries come last: order kept
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
            metadata[(prefix + key[len(inner) :]) if key != inner[:-1] else prefix[:-1]] = metadata.pop(key)


def _load_like_the_conv(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: entries saved under the wrapper's prefix ("1.weight": a checkpoint of the
    original model, or of a converted one) go to the wrapped conv; "1.conv.weight" (older converted
    checkpoints) loads as it is."""
    own = set(module._modules) | set(module._parameters) | set(module._buffers)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        target = prefix + "conv." + rest
        if rest.split(".", 1)[0] not in own and target not in state_dict:
            state_dict[target] = state_dict.pop(key)


#: The options ``HasteConv2d`` takes as keywords (``convert`` alone uses the others).
_LAYER_OPTIONS = tuple(option.name for option in _options.OPTIONS if option.layer)


@_options.keywords(layer=True)
class HasteConv2d(nn.Module):
    """Runs the wrapped conv with HASTE channel merging at the level of the current context.

    A drop-in replacement: the same input shapes ((N, C, H, W) or unbatched (C, H, W)), outputs and
    ``state_dict`` keys (the wrapped conv's entries are saved and loaded under the wrapper's own prefix).
    ``torch.compile`` works; ``torch.fx`` traces it as one call (a leaf module), so the traced graph follows
    the level at run time; ``torch.jit.trace`` and ``torch.export`` record the dense conv at level ``off`` and
    raise RuntimeError at other levels (the kernel is invisible to them); ``torch.jit.script`` raises.

    Args:
        conv: the pre-trained conv: an nn.Conv2d (or a subclass keeping its forward) with groups=1,
            dilation 1, zero padding and no module hooks (ValueError otherwise; see ``unsupported``).
        name: the layer's qualified name in its model (reports, per-layer schedules).
        options: the conversion options (``haste.Options``; default: the defaults); ``start_layer`` and
            ``include_pointwise`` choose which convs ``haste.convert`` converts and do nothing here. The keywords
            below, when given, change them:
        {options}
        levels: this layer's table level name -> hyperplanes (see ``levels.resolve_table``), each 0 (dense)
            or 1..max_hyperplanes; default ``haste.LEVELS``.
        plans: per engine and level, what this layer runs at each batch size (``haste.plans``: engine -> level ->
            entries); a level without a plan for the engine that runs uses ``levels`` at every batch size.
        batchnorm: the BatchNorm2d that alone reads the conv's output, taken in (``haste.fold``; ``convert`` passes
            it): at levels other than off the layer returns the BatchNorm's output (the CPU kernel applies an
            eval-mode BatchNorm as it writes) and the BatchNorm module passes its input on; at level off the layer
            returns the conv's output and the BatchNorm module runs. Not a submodule of the layer: the model keeps
            it where it was.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        name: str = "",
        options: _options.Options | None = None,
        levels: dict[str, int] | None = None,
        plans: dict | None = None,
        batchnorm: nn.BatchNorm2d | None = None,
        **changes,
    ) -> None:
        super().__init__()
        reason = unsupported(conv)
        if reason:
            raise ValueError(
                f"HasteConv2d cannot wrap {name or 'this conv'}: {reason}. It wraps an nn.Conv2d (or a subclass "
                "keeping nn.Conv2d's forward) with groups=1, dilation 1, zero padding and no module hooks"
            )
        if batchnorm is not None and not (
            isinstance(batchnorm, nn.BatchNorm2d) and batchnorm.num_features == conv.out_channels
        ):
            raise ValueError(
                f"batchnorm must be an nn.BatchNorm2d over the conv's {conv.out_channels} output channels; got "
                f"{batchnorm!r}"
            )
        _options.check_names(changes, _LAYER_OPTIONS, "HasteConv2d option")
        options = (options or _options.Options()).replace(**changes)
        self.conv = conv
        self.name = name
        #: the conversion options (``haste.Options``); the attributes below are its fields this layer uses
        self.options = options
        self.patch_size = patch_size = options.patch_size
        self.hash = options.hash
        self.sparsity = options.sparsity
        self.seed = options.seed
        self.max_hyperplanes = max_hyperplanes = options.max_hyperplanes
        self.merge = merge = options.merge
        self.levels = _levels.resolve_table(levels, name, max_hyperplanes)
        #: engine -> level -> LayerPlan (haste.plans); empty without plans
        self.plans = _plans.layer_plans(_plans.check_plans(plans), name, max_hyperplanes) if plans else {}
        self._planned: dict[tuple[str, str, int], int] = {}  # (engine, level, batch) -> hyperplanes, from plans
        self.padding = conv_padding(conv)
        region = tuple((patch_size - 1) * s + k for s, k in zip(conv.stride, conv.kernel_size))
        planes = sample_hyperplanes(
            max_hyperplanes, region[0] * region[1], family=options.hash, sparsity=options.sparsity, seed=options.seed
        )
        self.register_buffer("planes", planes.to(conv.weight.device, conv.weight.dtype), persistent=False)
        self._cpu_cache: tuple | None = None  # see _cpu_operands
        self._batchnorm = () if batchnorm is None else (batchnorm,)  # a tuple: not a submodule
        self._folded: tuple | None = None  # (weights and BatchNorm key, scale, shift): see _cpu_operands
        #: (level, hyperplanes, input shape) -> what a call runs and how a profile counts it (see ``_CALL_KEYS``),
        #: looked up once per key (see forward); cleared with the weight cache
        self._calls: dict[tuple, tuple] = {}
        self._geometry: dict[tuple[int, int], Geometry] = {}
        self._static = (conv.kernel_size, conv.stride, self.padding, patch_size, merge == "scaled", conv.out_channels)
        # Additions per channel for the first L planes (projection cost), precomputed per L.
        self._nnz = [0, *torch.count_nonzero(planes, dim=1).cumsum(0).tolist()]
        self.register_state_dict_post_hook(_state_dict_like_the_conv)
        self.register_load_state_dict_pre_hook(_load_like_the_conv)

    def __prepare_scriptable__(self):  # called by torch.jit.script before compiling: say why it cannot
        raise RuntimeError(_SCRIPT_ERROR.format(layer=self.name))

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, hash={self.hash}, sparsity={self.sparsity:.3g}, merge={self.merge}, "
            f"levels={self.levels}"
        )

    def _cpu_operands(
        self, hyperplanes: int, bn: nn.BatchNorm2d | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weight in the kernel's layout, bias, first ``hyperplanes`` planes, scale) for the CPU kernel, the
        output being ``conv * scale + bias``: with ``bn`` (the BatchNorm folded in) its scale and the conv's bias
        times it plus its shift, else the conv's bias and no scale (None). One cache,
        rebuilt when the weight or bias is replaced (``conv.weight = ...``, ``weight.data = ...``) or changed
        in place through autograd-visible ops (their version counter moves); ``_apply`` (e.g. ``.to()``) and
        ``haste.refresh`` clear it (in-place edits through ``.data`` bypass the version counter). The plane
        slices are kept per level."""
        conv = self.conv
        weight, bias = conv.weight, conv.bias
        key = _weights_key(weight, bias)
        cache = self._cpu_cache
        if cache is None or cache[0] is not weight or cache[1] is not bias or cache[2] != key:
            bias_t = engine.EMPTY if bias is None else bias.detach()
            cache = (weight, bias, key, engine.weight_layout(weight), bias_t, {})
            self._cpu_cache = cache
        planes = cache[5].get(hyperplanes)
        if planes is None:
            planes = cache[5][hyperplanes] = self.planes[:hyperplanes].contiguous()
        if bn is None:
            return cache[3], cache[4], planes, None
        key = (key, _batchnorm.state(bn))
        folded = self._folded
        if folded is None or folded[0] != key:
            scale, shift = _batchnorm.affine(bn)
            if bias is not None:
                shift = (bias.detach() * scale + shift).contiguous()
            folded = self._folded = (key, scale, shift)
        return cache[3], folded[2], planes, folded[1]

    @property
    def batchnorm(self) -> nn.BatchNorm2d | None:
        """The BatchNorm this layer took in (``haste.fold``), or None."""
        return self._batchnorm[0] if self._batchnorm else None

    def _foldable(self) -> nn.BatchNorm2d | None:
        """The BatchNorm the CPU kernel applies in this call (``batchnorm.foldable``), or None."""
        if not self._batchnorm:
            return None
        bn = self._batchnorm[0]
        return bn if _batchnorm.foldable(bn) else None

    def _normed(self, y: torch.Tensor, setting: _levels.Setting) -> torch.Tensor:
        """``y`` through the BatchNorm this layer took in, at levels other than off (at off the BatchNorm module
        runs where the model calls it); else ``y``."""
        if self._batchnorm and setting.level != "off":
            return _batchnorm.BATCHNORM_FORWARD(self._batchnorm[0], y)
        return y

    def _apply(self, fn, recurse=True):
        self._forget_calls()
        return super()._apply(fn, recurse)

    def _forget_calls(self) -> None:
        """Drop what the layer keeps from its calls (the CPU operands, a folded BatchNorm's affine, the kernel's kept
        calls): rebuilt on the next call."""
        self._cpu_cache = None
        self._folded = None
        self._calls = {}

    def __getstate__(self) -> dict:
        # copy.deepcopy and torch.save (pickle) of a model that has run: the kernel's kept calls cannot be pickled,
        # and a copy's calls must read the copy's weights, not the original's
        state = super().__getstate__()
        state.update(_cpu_cache=None, _folded=None, _calls={})
        return state

    def _geometry_for(self, size: tuple[int, int]) -> Geometry:
        """The tiling for inputs of ``size`` (ValueError if the conv has no output), memoised per size."""
        geo = self._geometry.get(size)
        if geo is None:
            try:
                geo = geometry(size, self.conv.kernel_size, self.conv.stride, self.padding, self.patch_size)
            except ValueError as exc:
                raise ValueError(f"{self.name or 'HasteConv2d'}: {exc}") from None
            self._geometry[size] = geo
        return geo

    def hyperplanes(
        self, setting: _levels.Setting | None = None, *, batch: int | None = None, engine: str | None = None
    ) -> int:
        """Hyperplanes this layer uses for ``setting`` (default: the current context's); 0 = dense. With the
        ``batch`` size and the ``engine`` that runs it, a level's plan for that engine decides (``haste.plans``);
        else the level table."""
        setting = setting or _levels.current()
        if setting.hyperplanes is not None:
            return _levels.check_hyperplanes(setting.hyperplanes, self.max_hyperplanes)
        if batch is not None and engine is not None and self.plans:
            key = (engine, setting.level, batch)
            planned = self._planned.get(key)
            if planned is None:
                plan = self.plans.get(engine, {}).get(setting.level)
                planned = plan.at(batch) if plan is not None else self.levels[setting.level]
                if len(self._planned) < _PLANNED_KEYS:
                    self._planned[key] = planned
            return planned
        return self.levels[setting.level]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The serving case first: a float32 CPU call this layer has run before with this level and input shape runs
        # what it ran then (the kernel's kept Call, which checks in C++ that the input, the weights and a folded
        # BatchNorm are as they were), and a profile counts it by the kernel's per-image sums
        # (haste.profile.Counted). Each Python step here touches objects that the kernel's previous call pushed out
        # of the caches: the same checks in Python cost 25-35 us per call at batch 1 (fmnist-resnet34's layer3),
        # the full path below more.
        setting = _levels.current()
        if setting.level == "off" and not isinstance(x, _Proxy) and active() is None:
            # level off: the wrapped conv's own computation, whatever the plans and the engine (torch.jit and
            # torch.export record the original conv; a folded BatchNorm runs where the model calls it)
            conv = self.conv
            return conv._conv_forward(x, conv.weight, conv.bias)
        if torch.jit.is_tracing():
            return self._traced(x, setting)
        call = self._calls.get((setting.level, setting.hyperplanes, x.shape))
        if call is not None and not _capturing():
            kept, kernel, normed, counted = call
            collector = active()
            if kept is None:  # dense: the conv's own weights; the engine matters only to a plan
                conv = self.conv
                if not self.plans or engine.runs_cpu(x, conv.weight):
                    y = conv._conv_forward(x, conv.weight, conv.bias)
                    if collector is not None:
                        collector.count(self, counted, None, x.shape[0])
                    return self._normed(y, setting)
            elif engine.runs_kept(kernel):  # HASTE on the CPU kernel: it checks the weights and the input itself
                if collector is None:
                    y = kept.run(x)
                    if y is not None:
                        return self._normed(y, setting) if normed else y
                elif collector.direct is not None and collector.direct == self.__dict__.get("converted_in"):
                    y = kept.run(x, collector.counted)  # the call records itself in the profile (no Python count)
                    if y is not None:
                        return self._normed(y, setting) if normed else y
                else:
                    out = kept.run(x, True)
                    if out is not None:
                        collector.count(self, counted, out[1], x.shape[0])
                        return self._normed(out[0], setting) if normed else out[0]
        return self._forward(x, setting)

    def _counted(self, geo: Geometry | None, hyperplanes: int, y: torch.Tensor) -> Counted:
        """How this layer's calls on inputs tiled as ``geo`` with ``hyperplanes`` count in a profile (``Counted``;
        ``y``: the output, for a dense call's count)."""
        conv = self.conv
        if not hyperplanes:
            dense = float(conv_flops(conv, y))
            return Counted(self.name, dense, fixed=dense, channels=conv.in_channels)
        dense, per_sum, per_bucket, overhead_max = layer_constants(
            geo, conv.in_channels, conv.out_channels, self._nnz[hyperplanes], hyperplanes, self.merge
        )
        return Counted(
            self.name, dense, per_sum=per_sum, overhead_max=overhead_max, per_bucket=per_bucket,
            tiles=geo.count, hyperplanes=hyperplanes, channels=conv.in_channels,
        )  # fmt: skip

    def _remember(
        self,
        setting: _levels.Setting,
        x: torch.Tensor,
        hyperplanes: int,
        geo: Geometry | None,
        y: torch.Tensor,
        bn: nn.BatchNorm2d | None = None,
    ) -> Counted | None:
        """Keep this call for ``forward``'s fast path: a HASTE call that ran on the CPU engine, as the kernel's
        ``Call`` holding its operands and checking the weight, bias and folded BatchNorm ``bn`` it ran with
        (``_kept_checks``), or a dense call whose layout does not depend on the input's strides (a dense call of an
        NCHW model converting small channels-last inputs is not kept) and, with plans, ran on the CPU engine's plan.
        Returns the call's ``Counted`` (``_counted``: the call's ``geo`` and output ``y``) when it keeps the call,
        else None."""
        conv = self.conv
        weight = conv.weight
        if len(self._calls) >= _CALL_KEYS or _capturing():
            return None
        if hyperplanes:
            if not engine.runs_cpu(x, weight):
                return None
            weight_t, bias, planes, scale = self._cpu_operands(hyperplanes, bn)
            guards, entries = self._kept_checks(bn)
            counted = self._counted(geo, hyperplanes, y)
            kept = engine.kept_call(weight_t, bias, planes, *self._static, scale, guards, entries, counted)
            entry = (kept, engine.current_kernel(), bn is None and bool(self._batchnorm), counted)
        elif (x.shape[2] * x.shape[3] <= _DENSE_NCHW_MAX_PIXELS and weight.is_contiguous()) or (
            self.plans and not engine.runs_cpu(x, weight)
        ):
            return None
        else:
            counted = self._counted(None, 0, y)
            entry = (None, None, False, counted)
        self._calls[(setting.level, setting.hyperplanes, x.shape)] = entry
        return counted

    def _kept_checks(self, bn: nn.BatchNorm2d | None) -> tuple[list[torch.Tensor], list[tuple]]:
        """What a kept CPU call (``engine.kept_call``) checks before it runs: (tensors that must keep their version
        and data: the weight first, the bias, with a folded BatchNorm ``bn`` its statistics and parameters;
        (dict, key, object) entries that must still hold: the conv's weight and bias, the BatchNorm's tensors, eps
        and training flag) — what ``_cpu_operands`` and ``_foldable`` read."""
        conv = self.conv
        params = conv._parameters
        guards = [params["weight"]] + ([params["bias"]] if params["bias"] is not None else [])
        entries = [(params, "weight", params["weight"]), (params, "bias", params["bias"])]
        if self._batchnorm:
            norm = self._batchnorm[0]
            entries.append((norm.__dict__, "training", norm.training))
            for owner in (norm._buffers, norm._parameters):
                entries += [(owner, k, v) for k, v in owner.items() if k != "num_batches_tracked"]
            if bn is not None:
                entries.append((norm.__dict__, "eps", norm.eps))
                guards += [v for k, v in [*norm._buffers.items(), *norm._parameters.items()]
                           if v is not None and k != "num_batches_tracked"]  # fmt: skip
        return guards, entries

    def _traced(self, x: torch.Tensor, setting: _levels.Setting) -> torch.Tensor:
        """What ``torch.jit.trace`` records for this layer at a level other than off: its dense conv where the level
        (its plan for the traced batch size) runs it dense, else the CPU kernel as the torch operator
        ``torch.ops.haste.conv2d``, its operands (the weight in the kernel's layout, the planes, a folded
        BatchNorm's affine) recorded as constants. RuntimeError where the call would not run on the CPU kernel."""
        with _untraced():
            shape = tuple(x.shape)
        layer = self.name or "HasteConv2d"
        if len(shape) != 4:
            raise ValueError(f"{layer}: torch.jit.trace needs a 4D (N, C, H, W) input; got shape {shape}")
        if shape[1] != self.conv.in_channels:
            raise ValueError(f"{layer} expects {self.conv.in_channels} input channels; got {shape[1]}")
        weight = self.conv.weight
        name = engine.choose(x, weight)
        hyperplanes = self.hyperplanes(setting, batch=shape[0], engine=name if self.plans else None)
        if hyperplanes == 0:
            if shape[2] * shape[3] <= _DENSE_NCHW_MAX_PIXELS and _channels_last_only(x) and weight.is_contiguous():
                x = x.contiguous()  # as _forward: a HASTE layer's channels-last output into an NCHW model
            return self._normed(self.conv._conv_forward(x, weight, self.conv.bias), setting)
        if name != "cpu":
            why = engine.explain(x, weight)[1]
            raise RuntimeError(_TRACE_ERROR.format(layer=self.name, engine=name, why=f" ({why})" if why else ""))
        geo = self._geometry_for(shape[2:])  # checks the size, naming the layer
        bn = self._foldable()  # applied by the kernel as it writes
        with _untraced():
            weight_t, bias, planes, scale = self._cpu_operands(hyperplanes, bn)
        sink = _trace.recording()
        if sink is None:
            y = engine.traced_conv2d(x, weight_t, bias, planes, *self._static, scale)
        else:  # haste.trace: the per-image sums too, for the trace's FLOPs count
            y, sums = engine.traced_conv2d(x, weight_t, bias, planes, *self._static, scale, sums=True)
            with _untraced():
                sink.append((self._counted(geo, hyperplanes, y), sums))
        return self._normed(y, setting) if bn is None else y

    def _forward(self, x: torch.Tensor, setting: _levels.Setting) -> torch.Tensor:
        if isinstance(x, _Proxy):  # torch.fx symbolic tracing: one call of this module (a leaf)
            return x.tracer.create_proxy("call_module", x.tracer.path_of_module(self), (x,), {})
        name = None
        if self.plans and setting.level not in (None, "off"):  # a plan is per engine and batch size
            name = engine.choose(x, self.conv.weight)
        hyperplanes = self.hyperplanes(setting, batch=x.shape[0] if x.dim() == 4 else 1, engine=name)
        collector = active()
        if hyperplanes == 0:
            conv = self.conv
            if (
                x.dim() == 4 and x.shape[2] * x.shape[3] <= _DENSE_NCHW_MAX_PIXELS and _channels_last_only(x)
                and conv.weight.is_contiguous()
            ):  # fmt: skip
                x, remember = x.contiguous(), False  # a HASTE layer's channels-last output into an NCHW model
            else:
                remember = x.dim() == 4
            y = conv._conv_forward(x, conv.weight, conv.bias)  # what conv(x) runs, without a 2nd module call
            counted = self._remember(setting, x, 0, None, y) if remember else None
            if collector is not None:
                counted = counted or self._counted(None, 0, y)
                collector.count(self, counted, None, y.shape[0] if y.dim() == 4 else 1)
            return self._normed(y, setting)
        if torch.compiler.is_exporting():
            raise RuntimeError(_EXPORT_ERROR.format(layer=self.name))
        if x.dim() != 4:
            if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
                return self.forward(x.unsqueeze(0)).squeeze(0)
            raise ValueError(
                f"{self.name or 'HasteConv2d'} expects a 4D (N, C, H, W) or 3D (C, H, W) input; got shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1] != self.conv.in_channels:
            raise ValueError(
                f"{self.name or 'HasteConv2d'} expects {self.conv.in_channels} input channels; got {x.shape[1]}"
            )
        weight = self.conv.weight
        name = name or engine.choose(x, weight)
        geo = self._geometry_for((x.shape[2], x.shape[3]))  # checks the size, naming the layer
        if name == "cpu":  # the per-call fast path: operands cached, sizes checked once
            bn = self._foldable()  # applied by the kernel as it writes
            weight_t, bias, planes, scale = self._cpu_operands(hyperplanes, bn)
            y, _, sums = engine.cpu_conv2d(x, weight_t, bias, planes, *self._static, scale)
            if bn is None:
                y = self._normed(y, setting)
            counted = self._remember(setting, x, hyperplanes, geo, y, bn)
            if collector is None:
                return y
            counted = counted or self._counted(geo, hyperplanes, y)
            sums = sums.tolist()
        else:
            result = engine.conv2d(
                x, weight, self.conv.bias, stride=self.conv.stride, padding=self.padding, patch=self.patch_size,
                planes=self.planes[:hyperplanes], engine=name, merge=self.merge,
            )  # fmt: skip
            y = self._normed(result.output, setting)
            if collector is None:
                return y
            counted = self._counted(geo, hyperplanes, y)
            sums = tile_sums(geo, result.groups)
        if collector is not None:
            collector.count(self, counted, sums, x.shape[0])
        return y
