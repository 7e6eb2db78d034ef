"""Dispatch: fastest measured backend, margin over masked dense, forcing, caching, fallback."""

from __future__ import annotations

import pytest
import torch

from sparse_kernels_cuda import Backend, CsrBackend, DispatchKey, Dispatcher, MaskedDenseBackend
from sparse_kernels_cuda.dispatch import DEFAULT_MAX_DENSITY, time_backend


class Fake(Backend):
    def __init__(self, name, pattern="unstructured", available=True):
        self.name = name
        self._pattern = pattern
        self._available = available

    def is_available(self):
        return self._available

    def supports(self, shape, dtype, pattern, device):
        return pattern == self._pattern

    def plan(self, mask):
        return mask

    def linear(self, x, weight, bias, plan):
        return x


def key(density=0.01, pattern="unstructured"):
    return DispatchKey((64, 64), 8, density, torch.float32, "cpu", pattern, True)


def timer(times, calls):
    def run(b):
        calls.append(b.name)
        return times[b.name]
    return run


def test_picks_fastest_and_caches():
    d = Dispatcher([Fake("a"), Fake("b")], MaskedDenseBackend())
    calls = []
    chosen = d.choose(key(), timer({"a": 0.5, "b": 0.2, "masked-dense": 1.0}, calls))
    assert chosen.name == "b"
    n = len(calls)
    assert n == 3 * (1 + d.repeats)  # one warm-up + repeats, every contender
    assert d.choose(key(), timer({}, calls)).name == "b" and len(calls) == n, "decision must be cached"
    assert d.timings[key()]["b"] == 0.2


def test_not_faster_beyond_margin_falls_back():
    d = Dispatcher([Fake("a")], MaskedDenseBackend(), margin=0.05)
    assert d.choose(key(), timer({"a": 0.97, "masked-dense": 1.0}, [])).name == "masked-dense"
    assert d.choose(key(0.02), timer({"a": 0.90, "masked-dense": 1.0}, [])).name == "a"


def test_unavailable_or_unsupported_backends_are_skipped():
    d = Dispatcher([Fake("gone", available=False), Fake("blocky", pattern="block64")], MaskedDenseBackend())
    calls = []
    assert d.choose(key(), timer({}, calls)).name == "masked-dense"
    assert calls == [], "nothing to compare: no timing"
    assert [b.name for b in d.candidates(key(pattern="block64"))] == ["blocky"]


def test_csr_is_not_tried_on_dense_masks():
    d = Dispatcher([CsrBackend()], MaskedDenseBackend(), max_density=0.3)
    assert [b.name for b in d.candidates(key(0.1))] == ["csr"]
    assert d.candidates(key(0.5)) == []


def test_default_csr_density_threshold_is_the_reference_cpu_break_even():
    d = Dispatcher([CsrBackend()], MaskedDenseBackend())
    assert d.max_density == DEFAULT_MAX_DENSITY == 0.2
    assert [b.name for b in d.candidates(key(0.2))] == ["csr"]
    assert d.candidates(key(0.201)) == []


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for one test."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def test_deterministic_mode_never_times_and_uses_masked_dense(deterministic):
    d = Dispatcher([Fake("a")], MaskedDenseBackend())
    calls = []
    times = {"a": 0.1, "masked-dense": 1.0}
    assert d.choose(key(), timer(times, calls)).name == "masked-dense"
    assert calls == [] and d.decisions == {} and d.timings == {}
    torch.use_deterministic_algorithms(False)
    assert d.choose(key(), timer(times, calls)).name == "a" and len(calls) == 2 * (1 + d.repeats)
    torch.use_deterministic_algorithms(True)
    assert d.choose(key(), timer(times, calls)).name == "masked-dense", "an earlier measured decision is not reused"


def test_deterministic_mode_keeps_a_forced_backend(deterministic):
    calls = []
    assert Dispatcher([Fake("a")], MaskedDenseBackend(), force="a").choose(key(), timer({}, calls)).name == "a"
    assert calls == []


@pytest.mark.parametrize("force", [None, "a"])
def test_autocast_never_times_and_uses_masked_dense(force):
    d = Dispatcher([Fake("a")], MaskedDenseBackend(), force=force)
    calls = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert d.choose(key(), timer({"a": 0.1, "masked-dense": 1.0}, calls)).name == "masked-dense"
    assert calls == [] and d.decisions == {}
    cuda_key = DispatchKey((64, 64), 8, 0.01, torch.float32, "cuda", "unstructured", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast of another device type does not matter
        assert d.choose(cuda_key, timer({"a": 0.1, "masked-dense": 1.0}, calls)).name == "a"


class Recording(Backend):
    """Dense linear that records whether its input requires grad."""

    name = "rec"

    def __init__(self):
        self.seen = []

    def is_available(self):
        return True

    def supports(self, shape, dtype, pattern, device):
        return True

    def plan(self, mask):
        return mask

    def linear(self, x, weight, bias, plan):
        self.seen.append(x.requires_grad)
        return x @ weight.t()


def test_timing_computes_the_input_gradient_only_when_the_input_needs_it(gen):
    b = Recording()
    w = torch.randn(4, 3, generator=gen)
    x = torch.randn(2, 3, generator=gen)
    time_backend(b, x, w, None, None, True)  # first layer: input needs no gradient
    time_backend(b, x.requires_grad_(), w, None, None, True)
    time_backend(b, x, w, None, None, True, input_grad=False)
    time_backend(b, x, w, None, None, False)  # inference: no backward at all
    assert b.seen == [False, True, False, False]


def test_force_and_unknown_force():
    d = Dispatcher([Fake("a"), Fake("blocky", pattern="block64")], MaskedDenseBackend(), force="a")
    calls = []
    assert d.choose(key(), timer({}, calls)).name == "a" and calls == []
    d = Dispatcher([Fake("blocky", pattern="block64")], MaskedDenseBackend(), force="blocky")
    assert d.choose(key(), timer({}, [])).name == "masked-dense", "forced backend that cannot run falls back"
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        Dispatcher([Fake("a")], MaskedDenseBackend(), force="nope")


def test_real_timing_on_cpu_picks_csr_only_when_sparse(gen):
    """At 50 % density CSR is not even tried; at 1 % on a big layer it wins the measurement.

    The machine may be shared, so the measured decision gets three attempts.
    """
    from sparse_kernels_cuda.formats import CsrPlan

    w = torch.randn(1024, 1024, generator=gen)
    x = torch.randn(256, 1024, generator=gen)
    mask = torch.rand(1024, 1024, generator=gen) < 0.01
    plans = {"csr": CsrPlan.from_mask(mask), "masked-dense": mask}

    def run(b):
        return time_backend(b, x, w, None, plans[b.name], True)

    assert Dispatcher([CsrBackend()], MaskedDenseBackend()).choose(key(0.5), run).name == "masked-dense"
    decisions = []
    for _ in range(3):
        d = Dispatcher([CsrBackend()], MaskedDenseBackend(), repeats=2)
        decisions.append(d.choose(key(0.01), run).name)
        if decisions[-1] == "csr":
            break
    assert decisions[-1] == "csr", decisions
