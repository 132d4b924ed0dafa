"""Per-forward, per-image FLOPs accounting of a (converted) model.

    with haste.profile(model) as report:
        with haste.compression("high"):
            model(x)
    report.saving  # fraction of the model's dense multiply-adds saved, overhead included

Counts are multiply-adds (torchvision's GFLOPS convention). Dense = every Conv2d and Linear run dense;
executed = merged convolutions of HASTE layers plus the dense cost of every other Conv2d/Linear;
overhead = centring, hashing, sorting, input and filter merging. With ``dense_layers=False`` the
report covers the HASTE layers only, and its fractions are of their FLOPs, not the model's (see
``profile``). The collector lives in a contextvar, so profiling in one thread does not count another
thread's forwards. Profiles nest (an outer profile also counts the forwards of an inner block), and a
profile counts only the layers of its own model (not those of another model run in the block).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .flops import conv_flops, linear_flops

#: A layer call's per-image sums: (sum over tiles of buckets x valid output pixels, sum of buckets) per image
#: (``haste.flops.tile_sums``; the CPU kernel's kept call returns them so).
Sums = Sequence[Sequence[float]]


@dataclass
class LayerStats:
    """Totals over all images seen by one layer, in multiply-adds."""

    kind: str  # "haste" or "dense"
    images: int = 0
    dense: float = 0.0
    executed: float = 0.0
    overhead: float = 0.0
    hyperplanes: int = 0
    buckets: float = 0.0  # sum over images of mean buckets per tile
    channels: int = 0

    @property
    def dense_flops(self) -> float:
        return self.dense / max(self.images, 1)

    @property
    def executed_flops(self) -> float:
        return self.executed / max(self.images, 1)

    @property
    def overhead_flops(self) -> float:
        return self.overhead / max(self.images, 1)

    @property
    def saving(self) -> float:
        """Fraction of this layer's dense multiply-adds saved, overhead included."""
        return 1.0 - (self.executed + self.overhead) / self.dense if self.dense else 0.0

    @property
    def mean_buckets(self) -> float:
        """Mean number of buckets per tile (HASTE layers; the channel count for dense ones)."""
        return self.buckets / max(self.images, 1)

    def as_dict(self) -> dict:
        """Per-image means of this layer (multiply-adds), JSON-ready."""
        return {
            "kind": self.kind,
            "flops_dense": self.dense_flops,
            "flops_executed": self.executed_flops,
            "flops_overhead": self.overhead_flops,
            "saving": self.saving,
            "hyperplanes": self.hyperplanes,
            "mean_buckets": self.mean_buckets,
            "channels": self.channels,
        }


@dataclass
class Report:
    """FLOPs of the forwards run inside ``profile``. Scalars are means per image, in multiply-adds.

    They cover the layers the profile recorded: every Conv2d and Linear of the model by default, the
    HASTE layers only with ``profile(..., dense_layers=False)`` (then ``dense_flops`` is the HASTE
    layers' dense count and ``saving`` a fraction of it, not of the whole model).
    """

    images: int = 0
    forwards: int = 0
    #: one row per image seen: (dense, executed, overhead) multiply-adds.
    per_image: list[tuple[float, float, float]] = field(default_factory=list)
    _layers: dict[str, LayerStats] = field(default_factory=dict, repr=False)
    #: HASTE layer calls (Counted, sums or None, images) of settled forwards whose per-layer totals are added when
    #: ``layers`` is read: a served batch needs ``per_image`` alone (the totals cost ~100 us a ResNet34 forward)
    _unfolded: list[tuple] = field(default_factory=list, repr=False)

    @property
    def layers(self) -> dict[str, LayerStats]:
        """Per-layer totals over the images seen (``LayerStats``), by qualified name, in call order."""
        if self._unfolded:
            calls, self._unfolded = self._unfolded, []
            layers = self._layers
            for c, sums, n in calls:
                stats = layers.get(c.name) or layers.setdefault(c.name, LayerStats(kind="haste"))
                stats.images += n
                stats.dense += c.dense * n
                stats.hyperplanes = c.hyperplanes
                stats.channels = c.channels
                if sums is None:  # a dense call
                    stats.executed += c.fixed * n
                    stats.buckets += c.channels * n
                    continue
                gv_total = sum(gv for gv, _ in sums)
                g_total = sum(g for _, g in sums)
                stats.executed += c.per_sum * gv_total + c.fixed * n
                stats.overhead += c.overhead_max * n - c.per_bucket * g_total
                stats.buckets += g_total / c.tiles
        return self._layers

    def _mean(self, col: int) -> float:
        return sum(row[col] for row in self.per_image) / len(self.per_image) if self.per_image else 0.0

    @property
    def dense_flops(self) -> float:
        return self._mean(0)

    @property
    def executed_flops(self) -> float:
        return self._mean(1)

    @property
    def overhead_flops(self) -> float:
        return self._mean(2)

    @property
    def saved_flops(self) -> float:
        return self.dense_flops - self.executed_flops - self.overhead_flops

    @property
    def saving(self) -> float:
        """``saved_flops / dense_flops``: the fraction of the recorded layers' dense multiply-adds saved,
        overhead included (0 at level off). The whole model's saving by default; with
        ``dense_layers=False``, the fraction of the HASTE layers' FLOPs (larger than the model's)."""
        return self.saved_flops / self.dense_flops if self.dense_flops else 0.0

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "flops_dense": self.dense_flops,
            "flops_executed": self.executed_flops,
            "flops_overhead": self.overhead_flops,
            "saving": self.saving,
            "layers": {name: s.as_dict() for name, s in self.layers.items()},
        }


@dataclass(frozen=True)
class Counted:
    """How a layer's calls count, given a call's per-image sums (``haste.flops.tile_sums``' rows: one
    (sum of buckets x valid output pixels ``gv``, sum of buckets ``g``) pair per image; None for a dense call): per
    image ``dense``, ``executed = per_sum * gv + fixed`` and ``overhead = overhead_max - per_bucket * g``;
    ``buckets`` per image ``g / tiles`` (a dense
    call: ``executed = fixed = dense``, no overhead, ``channels`` buckets). Only HASTE layers are counted this way
    (their rows' kind is ``haste``). ``_Collector.count`` (or the kept CPU call itself) records a call as (Counted,
    sums, images) and ``settle`` turns a forward's calls into FLOPs together."""

    name: str
    dense: float
    per_sum: float = 0.0
    fixed: float = 0.0
    overhead_max: float = 0.0
    per_bucket: float = 0.0
    tiles: int = 0
    hyperplanes: int = 0
    channels: int = 0

    def lists(self, sums: Sums | None, n: int) -> tuple[list[float], list[float], list[float], list[float]]:
        """Per-image (dense, executed, overhead, buckets) lists of a call of ``n`` images, as ``_Collector.add``
        takes them."""
        if sums is None:  # a dense call
            return [self.dense] * n, [self.fixed] * n, [0.0] * n, [float(self.channels)] * n
        return (
            [self.dense] * n, [self.per_sum * gv + self.fixed for gv, _ in sums],
            [self.overhead_max - self.per_bucket * g for _, g in sums], [g / self.tiles for _, g in sums],
        )  # fmt: skip


class _Collector:
    def __init__(self, model: nn.Module, report: Report, parent: _Collector | None, dense_layers: bool = True) -> None:
        self.model = model
        self.report = report
        self.parent = parent  # the enclosing profile's collector: it also counts what this one sees
        #: id(model) when the HASTE layers ``haste.convert`` converted in ``model`` may append their calls to
        #: ``counted`` themselves (the kept CPU call does it in C++): a profile with no enclosing one and no dense layer
        #: hook (whose rows must keep call order with theirs); else None
        self.direct = id(model) if parent is None and not dense_layers else None
        self.pending: list[list[float]] | None = None  # per image [dense, executed, overhead] of this forward
        #: layer calls of this forward not yet turned into FLOPs (``settle``): (Counted, sums or None, images)
        self.counted: list[tuple[Counted, Sums | None, int]] = []
        self._names: dict[int, str] | None = None  # dense layers' names, built when the first one runs
        self._members: set[int] | None = None  # ids of the model's modules, built if ``owns`` needs them
        self._owned: dict[int, bool] = {}  # id(module) -> part of the model (``owns``)

    def name(self, module: nn.Module) -> str | None:
        """Qualified name of a dense Conv2d/Linear of the model (None if it is not part of it)."""
        if self._names is None:
            self._names = {id(m): n for n, m in self.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        return self._names.get(id(module))

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is part of this profile's model: a HASTE layer of the model ``haste.convert`` converted
        at once, one found under its own name next, anything else by the set of the model's modules (a walk over
        them costs about 0.6 ms for a ResNet34, and the service opens a profile per batch)."""
        known = self._owned.get(id(module))
        if known is None:
            if module.__dict__.get("converted_in") == id(self.model):  # the model haste.convert converted
                self._owned[id(module)] = True
                return True
            name = getattr(module, "name", "")
            try:
                known = bool(name) and self.model.get_submodule(name) is module
            except AttributeError:
                known = False
            if not known:
                if self._members is None:
                    self._members = {id(m) for m in self.model.modules()}
                known = id(module) in self._members
            self._owned[id(module)] = known
        return known

    def is_active(self) -> bool:
        """Whether this profile is open in the current context (the innermost one or an enclosing one)."""
        collector = _collector.get()
        while collector is not None and collector is not self:
            collector = collector.parent
        return collector is self

    def count(self, module: nn.Module, counted: Counted, sums: Sums | None, images: int) -> None:
        """Add one call of ``images`` images of a layer by its per-image ``sums`` (a list append per layer; ``settle``
        turns the forward's calls into FLOPs together) to this profile and the enclosing ones that hold ``module``.
        A kept CPU call of a profile with ``direct`` set appends itself instead, without this Python call."""
        collector = self
        while collector is not None:
            if collector.owns(module):
                layers = collector.report.layers
                if collector.direct is None and counted.name not in layers:  # in call order with the dense layers'
                    layers[counted.name] = LayerStats(kind="haste")  # (``settle`` adds the others in call order)
                collector.counted.append((counted, sums, images))
            collector = collector.parent

    def settle(self) -> None:
        """Turn the layer calls recorded by ``count`` into FLOPs: per-image rows and per-layer totals (each call
        through ``add`` when their batch sizes differ)."""
        calls, self.counted = self.counted, []
        if not calls:
            return
        n = len(self.pending) if self.pending else calls[0][2]
        if any(images != n for _, _, images in calls):  # a model splitting its batch: spread as ``add`` does
            for c, sums, images in calls:
                dense, executed, overhead, buckets = c.lists(sums, images)
                self.add(c.name, "haste", dense, executed, overhead, hyperplanes=c.hyperplanes, buckets=buckets,
                         channels=c.channels)  # fmt: skip
            return
        # Counted.lists' formulas per image; the per-layer totals when the report's ``layers`` are read
        dense = 0.0
        executed, overhead = [0.0] * n, [0.0] * n
        for c, sums, _ in calls:
            dense += c.dense
            if sums is None:  # a dense call
                for i in range(n):
                    executed[i] += c.fixed
                continue
            for i, (gv, g) in enumerate(sums):
                executed[i] += c.per_sum * gv + c.fixed
                overhead[i] += c.overhead_max - c.per_bucket * g
        self.report._unfolded += calls
        if not self.pending:
            self.pending = [[dense, ex, ov] for ex, ov in zip(executed, overhead)]
            return
        for acc, ex, ov in zip(self.pending, executed, overhead):
            acc[0] += dense
            acc[1] += ex
            acc[2] += ov

    def add(self, name: str, kind: str, dense, executed, overhead, *, hyperplanes=0, buckets=None, channels=0):
        """Record per-image lists (floats, one per image) of one layer call. A layer that sees another batch
        size than the forward's first layer (a model that splits or regroups its batch) adds its totals spread
        evenly over the forward's images."""
        n = len(dense)
        stats = self.report.layers.setdefault(name, LayerStats(kind=kind))
        stats.images += n
        stats.dense += sum(dense)
        stats.executed += sum(executed)
        stats.overhead += sum(overhead)
        stats.hyperplanes = hyperplanes
        stats.channels = channels
        stats.buckets += sum(buckets) if buckets is not None else channels * n
        if not self.pending:
            self.pending = [list(row) for row in zip(dense, executed, overhead)]
            return
        if len(self.pending) == n:
            rows = zip(dense, executed, overhead)
        else:
            images = len(self.pending)
            rows = [(sum(dense) / images, sum(executed) / images, sum(overhead) / images)] * images
        for acc, row in zip(self.pending, rows):
            acc[0] += row[0]
            acc[1] += row[1]
            acc[2] += row[2]

    def flush(self) -> None:
        """Close the current forward: its per-image rows go to the report."""
        self.settle()
        if self.pending is not None:
            self.report.per_image.extend(tuple(row) for row in self.pending)
            self.report.images += len(self.pending)
            self.report.forwards += 1
        self.pending = None

    def hook(self, module: nn.Module, args: tuple, output) -> None:
        """Global forward hook (``dense_layers=True``): counts the dense Conv2d/Linear of the model."""
        # HasteConv2d records itself and runs its wrapped conv without a module call, so every
        # Conv2d/Linear seen here runs dense
        if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(output, torch.Tensor) and self.is_active():
            name = self.name(module)
            if name is not None:
                if isinstance(module, nn.Conv2d):
                    n, flops = (output.shape[0] if output.dim() == 4 else 1), float(conv_flops(module, output))
                else:
                    n, flops = (output.shape[0] if output.dim() > 1 else 1), float(linear_flops(module, output))
                self.add(name, "dense", [flops] * n, [flops] * n, [0.0] * n)

    def end_of_forward(self, module: nn.Module, args: tuple, output) -> None:
        """Forward hook of the profiled model: one forward of it ended in this context."""
        if self.is_active():
            self.flush()


_collector: contextvars.ContextVar[_Collector | None] = contextvars.ContextVar("haste_profile", default=None)


def active() -> _Collector | None:
    """The collector of the innermost ``profile`` of this context, if any."""
    return _collector.get()


@contextlib.contextmanager
def profile(model: nn.Module, *, dense_layers: bool = True) -> Iterator[Report]:
    """Collect per-image dense / executed / overhead multiply-adds of the forwards of ``model`` run in
    this context (thread or task) inside the block. Yields a Report filled as forwards run: one row per
    image of every forward of ``model`` (closed when ``model`` returns), counting only ``model``'s own
    layers. Profiles nest: an enclosing profile also counts the forwards of the inner blocks.

    ``dense_layers=False`` records the HASTE layers only, without the global module hook that sees
    the other Conv2d/Linear layers (that hook slows every module call). The report's ``saved_flops``
    (dense - executed - overhead) is then still the whole model's saving in multiply-adds (the other
    layers run dense), but ``dense_flops`` is the HASTE layers' alone, so ``saving`` is relative to the
    HASTE layers, not the model: for the model's fraction divide ``saved_flops`` by the model's dense count
    (``haste.count_flops``). The service does this per batch.

    A layer that sees another batch size than the first layer of the same forward (a model splitting its
    batch) is counted by its totals, spread evenly over that forward's images.
    """
    report = Report()
    collector = _Collector(model, report, _collector.get(), dense_layers)
    token = _collector.set(collector)
    end = model.register_forward_hook(collector.end_of_forward)
    handle = nn.modules.module.register_module_forward_hook(collector.hook) if dense_layers else None
    try:
        yield report
    finally:
        if handle is not None:
            handle.remove()
        end.remove()
        _collector.reset(token)
        collector.flush()
