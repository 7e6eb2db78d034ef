"""Pytest fixtures for plugin authors, loaded through the ``pytest11`` entry point.

Installing ``sparsecore`` makes these fixtures available in every pytest run,
so a plugin's tests need no ``conftest.py``:

```python
def test_grows_where_the_gradient_is_large(sparsifier_factory, train_steps):
    sparsifier = sparsifier_factory("my-algorithm", density=0.5, update_every=2)
    train_steps(sparsifier, 4)
    assert len(sparsifier.history) == 2
```

Fixtures:

* ``tiny_model``: a seeded MLP ``16 -> 32 -> 24 -> 4`` (three sparse layers).
* ``tiny_optimizer``: SGD with momentum 0.9 over ``tiny_model``.
* ``sparsifier_factory``: builds a ready :class:`~sparsecore.Sparsifier`
  (see :func:`make_sparsifier`) and detaches it after the test.
* ``register_algorithm``: registers an algorithm factory in
  :data:`sparsecore.registry` for one test and removes it after.
* ``train_steps``: the :func:`train_steps` helper.

The helpers are plain functions too, for use outside pytest.

:class:`AlgorithmConformance` (from :mod:`sparsecore.conformance`) is the
contract suite an algorithm's tests subclass::

    class TestMyAlgorithmConformance(sparsecore.testing.AlgorithmConformance):
        algorithm = MyAlgorithm
        options = {"update_every": 2}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from sparsecore.plugins import Registration
    from sparsecore.sparsifier import Sparsifier

# The suite's assertions get pytest's detailed messages; it is imported on first use (it imports torch).
pytest.register_assert_rewrite("sparsecore.conformance")


def __getattr__(name: str) -> Any:
    """``AlgorithmConformance`` is loaded from :mod:`sparsecore.conformance` when first asked for."""
    if name == "AlgorithmConformance":
        from sparsecore.conformance import AlgorithmConformance

        return AlgorithmConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: Layer widths of :func:`make_tiny_model`: input features, two hidden layers, output classes.
TINY_WIDTHS = (16, 32, 24, 4)


def make_tiny_model(seed: int = 0) -> nn.Module:
    """A seeded MLP ``Linear(16, 32) -> ReLU -> Linear(32, 24) -> ReLU -> Linear(24, 4)``.

    Its sparse layers are ``"0"`` (32 x 16 = 512 weights), ``"2"`` (24 x 32 =
    768 weights) and ``"4"`` (4 x 24 = 96 weights): 1376 in all.

    Args:
        seed: seed of the weight initialisation.
    """
    import torch
    from torch import nn

    state = torch.get_rng_state()  # leave the global CPU generator as it was
    try:
        torch.manual_seed(seed)
        i, h1, h2, o = TINY_WIDTHS
        return nn.Sequential(nn.Linear(i, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, o))
    finally:
        torch.set_rng_state(state)


def make_sparsifier(algorithm: Any = "static", *, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, density: float = 0.5,
                    plugins: Sequence[Any] = (), total_steps: int | None = 100, seed: int = 0,
                    **options: Any) -> Sparsifier:
    """Build a :class:`~sparsecore.Sparsifier` with small-test defaults.

    Args:
        algorithm: a registered algorithm name or a plugin object.
        model: the model; a fresh :func:`make_tiny_model` when omitted.
        optimizer: the optimizer; SGD (lr 0.1, momentum 0.9) over ``model`` when omitted.
        density: overall density.
        plugins: extra plugins for the run (objects or registered names).
        total_steps: optimizer steps of the run, for schedules.
        seed: seed of the sparsifier's generator (initial masks, random growth).
        **options: options of the algorithm's factory and engine keywords
            (``distribution``, ``dense_first_layer``, ...).

    Returns:
        The sparsifier, with its optimizer hooks installed.
    """
    import torch

    from sparsecore.sparsifier import Sparsifier

    if model is None:
        if optimizer is not None:
            raise ValueError("make_sparsifier: an optimizer was given without its model; pass model= as well")
        model = make_tiny_model()
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Sparsifier(model, optimizer, algorithm=algorithm, density=density, plugins=plugins,
                      total_steps=total_steps, seed=seed, **options)


def tiny_batches(count: int = 1, batch_size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded ``(inputs, targets)`` batches for :func:`make_tiny_model` (16 features, 4 classes).

    For algorithms that look at data before training (``Sparsifier(..., data=tiny_batches())``).

    Args:
        count: number of batches.
        batch_size: samples per batch.
        seed: seed of the data.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    features, classes = TINY_WIDTHS[0], TINY_WIDTHS[-1]
    return [(torch.randn(batch_size, features, generator=generator),
             torch.randint(0, classes, (batch_size,), generator=generator)) for _ in range(count)]


def _input_features(model: nn.Module) -> int:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if getattr(module, "weight", None) is not None:
            break
    raise ValueError(f"train_steps: cannot infer the input shape of {type(model).__name__} "
                     "(its first weighted module is not nn.Linear); pass input_shape=")


def train_steps(sparsifier: Sparsifier, steps: int, *, batch_size: int = 4,
                input_shape: Sequence[int] | None = None, epoch_every: int | None = None,
                seed: int = 0) -> list[float]:
    """Run ``steps`` optimizer steps of cross-entropy training on random data.

    Each step draws a batch from a generator seeded with ``seed`` (so two calls
    with the same seed see the same data), with targets in
    ``range(number of model outputs)``, and runs ``zero_grad``, ``backward``
    and ``step`` on the sparsifier's own optimizer; the engine's step hooks do
    the rest.

    Args:
        sparsifier: the sparsifier whose model and optimizer are trained.
        steps: how many optimizer steps to run.
        batch_size: samples per step.
        input_shape: shape of one sample; inferred for models whose first
            weighted module is ``nn.Linear``.
        epoch_every: when given, call ``sparsifier.epoch_end(epoch)`` after every
            ``epoch_every`` steps (epochs numbered from 0).
        seed: seed of the data.

    Returns:
        The loss of every step, in order.
    """
    import torch
    from torch.nn import functional as F

    if steps < 0:
        raise ValueError(f"train_steps: steps must be >= 0, got {steps}")
    if epoch_every is not None and epoch_every <= 0:
        raise ValueError(f"train_steps: epoch_every must be a positive int, got {epoch_every}")
    model, optimizer = sparsifier.model, sparsifier.optimizer
    shape = tuple(input_shape) if input_shape is not None else (_input_features(model),)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for i in range(steps):
        x = torch.randn((batch_size, *shape), generator=generator).to(device)
        optimizer.zero_grad()
        out = model(x)
        y = torch.randint(0, out.shape[-1], (batch_size,), generator=generator).to(device)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if epoch_every is not None and (i + 1) % epoch_every == 0:
            sparsifier.epoch_end((i + 1) // epoch_every - 1)
    return losses


@pytest.fixture
def tiny_model() -> nn.Module:
    """A fresh seeded MLP ``16 -> 32 -> 24 -> 4`` (see :func:`make_tiny_model`)."""
    return make_tiny_model()


@pytest.fixture
def tiny_optimizer(tiny_model: nn.Module) -> torch.optim.Optimizer:
    """SGD (lr 0.1, momentum 0.9) over ``tiny_model``."""
    import torch

    return torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9)


@pytest.fixture
def sparsifier_factory() -> Iterator[Callable[..., Sparsifier]]:
    """A function building ready sparsifiers (:func:`make_sparsifier`); each is detached after the test.

    Example:
        ```python
        def test_density(sparsifier_factory, tiny_model, tiny_optimizer):
            sparsifier = sparsifier_factory("set", model=tiny_model, optimizer=tiny_optimizer, density=0.25)
            assert sparsifier.nnz == 344
        ```
    """
    built: list[Sparsifier] = []

    def factory(algorithm: Any = "static", **kwargs: Any) -> Sparsifier:
        sparsifier = make_sparsifier(algorithm, **kwargs)
        built.append(sparsifier)
        return sparsifier

    yield factory
    for sparsifier in built:
        sparsifier.remove()


@pytest.fixture
def register_algorithm() -> Iterator[Callable[..., Registration]]:
    """A function ``register(name, factory, replace=False)`` registering an algorithm for this test only.

    The registration is removed after the test; with ``replace=True`` an
    algorithm already registered under ``name`` (e.g. by an installed
    distribution) is set aside for the test and restored after.

    Example:
        ```python
        def test_my_algorithm(register_algorithm, sparsifier_factory):
            register_algorithm("my-algorithm", MyAlgorithm)
            sparsifier = sparsifier_factory("my-algorithm", density=0.5)
        ```
    """
    from sparsecore.plugins import registry

    registered: list[str] = []
    saved: dict[str, Registration] = {}

    def register(name: str, factory: Callable[..., Any], replace: bool = False) -> Registration:
        registry.load()
        if name in registry.algorithms and name not in registered:
            if not replace:
                raise ValueError(f"algorithm {name!r} is already registered by "
                                 f"{registry.algorithms[name].distribution!r}; pass replace=True to override it "
                                 "for this test")
            saved.setdefault(name, registry.algorithms.pop(name))
        reg = registry.register_algorithm(name, factory, distribution="<test>")
        if name not in registered:
            registered.append(name)
        return reg

    yield register
    for name in registered:
        registry.algorithms.pop(name, None)
    registry.algorithms.update(saved)


@pytest.fixture(name="train_steps")
def train_steps_fixture() -> Callable[..., list[float]]:
    """The :func:`train_steps` helper: ``train_steps(sparsifier, steps, ...)``."""
    return train_steps
