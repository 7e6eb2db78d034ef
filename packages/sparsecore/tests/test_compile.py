"""``torch.compile``: whole models compiled with every in-repo algorithm attached train as eager ones do.

Each case builds two identical models, optimizers and sparsifiers (same
seeds); one model runs compiled (``backend="aot_eager"``: the graph capture
and autograd tracing of ``torch.compile`` without code generation, to keep CPU
time low), the other eagerly. Every step (forward, backward, optimizer step,
and the topology updates the algorithm's schedule makes, plus an explicit
``update_topology`` and ``epoch_end``) must give the same outputs and exactly
the same masks. Tolerance: outputs and weights equal to ``rtol=1e-4,
atol=1e-5`` (the compiled graph may order floating-point operations
differently); masks and nonzero counts exactly.

The engine's one-shot forward hooks (they record each layer's output size on
the first forward) break the graph of the first compiled call, and the model
is compiled again once they are gone. The MLP cases compile from the very
first call; the conv-net and GPT cases first call both models once without
gradients, so they are compiled once (a third of the time).

Checkpoints: a model (or a sub-module) compiled in one run and not in the
other saves state-dict keys and sparse-layer names with ``_orig_mod.``
segments; the engine loads them across.
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from sparsecore.models import TinyGPT
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _quiet_compiler_trace() -> Iterator[None]:
    """Keep torch.compile's debug-level trace records away from pytest's log capture (they cost a third of the time)."""
    trace = logging.getLogger("torch.__trace")
    level = trace.level
    trace.setLevel(logging.WARNING)
    yield
    trace.setLevel(level)

STEPS = 6
RTOL, ATOL = 1e-4, 1e-5

#: algorithm -> (algorithm options, engine keywords): schedules short enough to update within STEPS steps.
ALGORITHMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "static": ({}, {}),
    "set": ({"update_every": 2}, {}),
    "sparse-momentum": ({"update_every": 2}, {}),
    "rigl": ({"update_every": 2}, {}),
    "gmp": ({"start": 0.1, "end": 0.75, "update_every": 2}, {}),
    "snip": ({}, {}),
    "dsd": ({}, {}),
    "sr-ste": ({}, {}),
    "asp": ({}, {}),
    "swat": ({}, {}),
}

#: Algorithms whose runs make no update of their own: the test runs one by hand (RigL refuses it: it needs the
#: dense gradient its schedule keeps).
BY_HAND = ("static", "snip")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


class ConvNet(nn.Module):
    """Two convolutions and a linear head; every dim 1 divides by 4 (2:4 runs need it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def gpt() -> nn.Module:
    return TinyGPT(context=16, dim=32, depth=1, heads=2)


def mlp_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def conv_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 4, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


def gpt_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 256, (4, 17), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]]] = {
    "mlp": (mlp, mlp_batch),
    "conv": (ConvNet, conv_batch),
    "gpt": (gpt, gpt_batch),
}


class Run:
    """A model, its optimizer and sparsifier, and the model as called (compiled or not)."""

    def __init__(self, model: nn.Module, algorithm: str, make_batch: Callable, backend: str | None,
                 warm_up: bool) -> None:
        options, engine = ALGORITHMS[algorithm]
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        data = [make_batch(torch.Generator().manual_seed(100 + i)) for i in range(2)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.sparsifier = sparsecore.Sparsifier(model, self.optimizer, algorithm, density=0.5,
                                                    total_steps=STEPS, seed=0, data=data, algorithm_options=options,
                                                    **engine)
        if warm_up:
            with torch.no_grad():
                model(data[0][0])
        self.call = model if backend is None else torch.compile(model, backend=backend)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.call(x)
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(out, y).backward()
        self.optimizer.step()
        return out.detach()

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: layer.mask.clone() for name, layer in self.sparsifier.layers.items()}


def assert_same(eager: Run, compiled: Run, what: str) -> None:
    assert eager.masks().keys() == compiled.masks().keys()
    for name, mask in eager.masks().items():
        assert torch.equal(mask, compiled.sparsifier.layers[name].mask), f"{what}: mask of {name} differs"
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{what}: {n}: {m}")


def train_both(model_name: str, algorithm: str, backend: str,
               warm_up: bool = False) -> tuple[Run, Run, list[dict[str, torch.Tensor]]]:
    """Train the eager and the compiled copy side by side, checking every step; ``warm_up``: see the module doc."""
    factory, make_batch = MODELS[model_name]
    torch.manual_seed(0)
    base = factory()
    eager = Run(copy.deepcopy(base), algorithm, make_batch, None, warm_up)
    compiled = Run(copy.deepcopy(base), algorithm, make_batch, backend, warm_up)
    assert_same(eager, compiled, "after set-up")
    history = [eager.masks()]
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x, y = make_batch(g)
        out_eager, out_compiled = eager.step(x, y), compiled.step(x, y)
        torch.testing.assert_close(out_compiled, out_eager, rtol=RTOL, atol=ATOL)
        if step == STEPS // 2 - 1:
            for run in (eager, compiled):
                run.sparsifier.epoch_end(0)
                if algorithm in BY_HAND:
                    run.sparsifier.update_topology(0.2)
        assert_same(eager, compiled, f"after step {step + 1}")
        history.append(eager.masks())
    for run in (eager, compiled):
        run.sparsifier.epoch_end(1)
    assert_same(eager, compiled, "after the last epoch end")
    with torch.no_grad():  # the trained models agree on fresh inputs too
        x, _ = make_batch(torch.Generator().manual_seed(7))
        torch.testing.assert_close(compiled.call(x), eager.model(x), rtol=RTOL, atol=ATOL)
    return eager, compiled, history


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_compiled_training_matches_eager(model_name: str, algorithm: str) -> None:
    torch._dynamo.reset()
    eager, compiled, history = train_both(model_name, algorithm, "aot_eager", warm_up=model_name != "mlp")
    if algorithm not in BY_HAND:  # every other algorithm changes its masks within the run
        changed = any(not torch.equal(a[n], b[n]) for a, b in zip(history, history[1:], strict=False) for n in a)
        assert changed or compiled.sparsifier.history, f"{algorithm} made no topology change in {STEPS} steps"
    assert compiled.sparsifier.nnz == eager.sparsifier.nnz


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="the inductor backend needs a C compiler (cc/gcc), and none is installed")
def test_inductor_compiled_training_matches_eager() -> None:
    torch._dynamo.reset()
    eager, compiled, _ = train_both("mlp", "rigl", "inductor")
    assert compiled.sparsifier.nnz == eager.sparsifier.nnz


# --- checkpoints across compile ------------------------------------------------------------


class Body(nn.Module):
    """An MLP whose body may be compiled in place: its layers are then named ``body._orig_mod.<i>``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def trained(model: nn.Module, wrapper: nn.Module | None = None) -> tuple[nn.Module, sparsecore.Sparsifier]:
    """``model`` (or its compiled ``wrapper``) with a SET sparsifier after four steps and one update."""
    called = wrapper if wrapper is not None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(called, optimizer, "set", density=0.5, total_steps=8, seed=0,
                                       update_every=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x, y = mlp_batch(g)
        optimizer.zero_grad()
        F.cross_entropy(called(x), y).backward()
        optimizer.step()
    assert sparsifier.history, "the run made no topology update"
    return called, sparsifier


def fresh(wrapper: bool) -> tuple[nn.Module, nn.Module, sparsecore.Sparsifier]:
    """An untrained MLP (seeded differently), its compiled wrapper or itself, and a SET sparsifier on that."""
    torch.manual_seed(1)
    model = mlp()
    called = torch.compile(model, backend="aot_eager") if wrapper else model
    sparsifier = sparsecore.Sparsifier(called, torch.optim.SGD(model.parameters(), lr=0.1), "set", density=0.5,
                                       total_steps=8, seed=0, update_every=2)
    return model, called, sparsifier


@pytest.mark.parametrize("saved_compiled", [True, False], ids=["compiled-to-plain", "plain-to-compiled"])
def test_whole_model_checkpoint_loads_across_compile(saved_compiled: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = mlp()
    saver, saved_sparsifier = trained(model, torch.compile(model, backend="aot_eager") if saved_compiled else None)
    weights, state = saver.state_dict(), saved_sparsifier.state_dict()
    assert all(k.startswith("_orig_mod.") for k in weights) == saved_compiled
    loader_model, loader, sparsifier = fresh(wrapper=not saved_compiled)
    loader.load_state_dict(weights)  # strict: every key found under the other naming
    sparsifier.load_state_dict(state)
    for name, layer in sparsifier.layers.items():
        assert torch.equal(layer.mask, saved_sparsifier.layers[name].mask)
    for a, b in zip(model.state_dict().values(), loader_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x, _ = mlp_batch(torch.Generator().manual_seed(5))
    torch.testing.assert_close(loader(x), saver(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("saved_compiled", [True, False], ids=["compiled-to-plain", "plain-to-compiled"])
def test_sparsifier_layer_names_with_compiled_submodules_load_across(saved_compiled: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    saver = Body()
    if saved_compiled:
        saver.body = torch.compile(saver.body, backend="aot_eager")  # type: ignore[assignment]
    _, saved_sparsifier = trained(saver)
    prefix = "body._orig_mod." if saved_compiled else "body."
    assert list(saved_sparsifier.layers) == [f"{prefix}{i}" for i in (0, 2, 4)]
    torch.manual_seed(1)
    loader = Body()
    if not saved_compiled:
        loader.body = torch.compile(loader.body, backend="aot_eager")  # type: ignore[assignment]
    sparsifier = sparsecore.Sparsifier(loader, torch.optim.SGD(loader.parameters(), lr=0.1), "set", density=0.5,
                                       total_steps=8, seed=0, update_every=2)
    loader.load_state_dict(saver.state_dict())
    sparsifier.load_state_dict(saved_sparsifier.state_dict())
    saved_layers = list(saved_sparsifier.layers.values())
    for layer, saved in zip(sparsifier.layers.values(), saved_layers, strict=True):
        assert torch.equal(layer.mask, saved.mask) and torch.equal(layer.weight, saved.weight)
    assert sparsifier.step == saved_sparsifier.step == 4


def test_real_mismatches_still_fail_and_the_key_mapping_ends_with_remove() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = mlp()
    compiled, saved_sparsifier = trained(model, torch.compile(model, backend="aot_eager"))
    weights = compiled.state_dict()
    _, loader, sparsifier = fresh(wrapper=False)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"_orig_mod.9.weight\""):
        loader.load_state_dict({**weights, "_orig_mod.9.weight": torch.zeros(1)})
    state = saved_sparsifier.state_dict()
    state["masks"] = {("_orig_mod.x" if name == "4" else name): mask for name, mask in state["masks"].items()}
    with pytest.raises(sparsecore.CheckpointError, match="differ from this model's sparse layers"):
        sparsifier.load_state_dict(state)
    sparsifier.remove()
    with pytest.raises(RuntimeError, match="Missing key"):
        loader.load_state_dict(weights)
