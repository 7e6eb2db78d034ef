"""``sparsecore train --config FILE`` / ``--print-config``, plugin options by name, and what config.json records."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import sparsecore
import torch
from sparsecore import cli
from sparsecore.plugins import distribution_of, plugin_entries, registry
from sparsecore.train import RECIPES, TrainConfig, config_from_file, get_recipe, run_training
from sparsecore.train.cli import config_from_args
from sparsecore.train.config import parse_plugin_options
from sparsecore.train.config_files import check_values, dump_config, parse_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _parse(*argv: str):
    return cli.build_parser().parse_args(["train", *argv])


def _config(*argv: str) -> TrainConfig:
    return config_from_args(_parse(*argv))


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(capsys, *argv: str) -> str:
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err.strip()


class Counter:
    """A plugin with one option, registered by name in the tests that need it."""

    def __init__(self, every: int = 1) -> None:
        self.every = every

    @sparsecore.hookimpl
    def on_step(self, step: int) -> None:
        """Nothing to do; the plugin is here for its options."""


@pytest.fixture
def counter_plugin():
    registry.load()
    registry.register_plugin("counter", Counter, distribution="<test>")
    yield
    registry.unregister("counter")


# ----------------------------------------------------------------------
# config files
# ----------------------------------------------------------------------
def test_file_values_sit_between_the_recipe_and_the_flags(tmp_path):
    path = _write(tmp_path, "run.toml", """
recipe = "snip-official"
epochs = 20
batch-size = 50
lr_milestones = [5, 10]

[options]
prune-biases = false
""")
    config = _config("--config", path, "--epochs", "3", "--option", "init=kaiming")
    expected = TrainConfig.from_dict({**get_recipe("snip-official").values, "recipe": "snip-official", "epochs": 3,
                                      "batch_size": 50, "lr_milestones": [5, 10]})
    expected.options.update(prune_biases=False, init="kaiming")
    assert config == expected
    # --recipe on the command line replaces the file's recipe; the file's values still apply on top of it
    other = _config("--config", path, "--recipe", "snfs-mnist")
    assert (other.recipe, other.algorithm, other.epochs, other.limit_train) == ("snfs-mnist", "sparse-momentum", 20,
                                                                               None)


def test_config_from_file_is_what_the_cli_builds(tmp_path):
    path = _write(tmp_path, "run.toml", 'recipe = "dsd-mnist"\nepochs = 9\n[options]\nphase_epochs = [3, 3, 3]\n')
    assert config_from_file(path, seed=3) == _config("--config", path, "--seed", "3")
    assert config_from_file(path).options == {"phase_epochs": [3, 3, 3]}
    with pytest.raises(sparsecore.ConfigurationError, match=f"^config file {path}: key 'epochs': must be a "):
        config_from_file(_write(tmp_path, "run.toml", "epochs = -1\n"))


def test_yaml_file_gives_the_same_config_as_toml(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML (the train extra) reads YAML config files")
    toml = _write(tmp_path, "a.toml", 'algorithm = "set"\ndensity = 0.1\nplugins = []\n[options]\nprune_rate = 0.5\n')
    yaml = _write(tmp_path, "a.yaml", "algorithm: set\ndensity: 0.1\nplugins: []\noptions:\n  prune_rate: 0.5\n")
    assert _config("--config", toml) == _config("--config", yaml)
    assert _config("--config", yaml).options == {"prune_rate": 0.5}


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_print_config_reads_back_to_the_same_config(recipe, fmt, tmp_path, capsys):
    if fmt == "yaml":
        pytest.importorskip("yaml", reason="PyYAML (the train extra) writes YAML config files")
    argv = ["--recipe", recipe, "--epochs", "7", "--option", "extra=[1, 2]"]
    assert cli.main(["train", *argv, "--print-config", fmt]) == 0
    printed = capsys.readouterr().out
    path = _write(tmp_path, f"printed.{fmt}", printed)
    assert _config("--config", path) == _config(*argv)
    # self-contained: every field but the None ones is written out
    assert set(check_values(parse_text(printed, fmt, path), path)) == \
        {k for k, v in _config(*argv).to_dict().items() if v is not None and v != {}}


def test_print_config_defaults_to_the_format_of_the_config_file(tmp_path, capsys):
    pytest.importorskip("yaml", reason="PyYAML (the train extra) writes YAML config files")
    path = _write(tmp_path, "run.yml", "epochs: 2\n")
    assert cli.main(["train", "--config", path, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 2\n" in out and "epochs = " not in out
    assert cli.main(["train", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["epochs"] == TrainConfig().epochs


@pytest.mark.parametrize(("text", "expected"), [
    ("epoch = 3\n", "config file {path}: unknown key 'epoch' (did you mean 'epochs'?)"),
    ("epochs = 0\n", "config file {path}: key 'epochs': must be a positive integer, got 0"),
    ("epochs = '3'\n", "config file {path}: key 'epochs' must be an integer, got '3'"),
    ("lr = true\n", "config file {path}: key 'lr' must be a finite number, got True"),
    ("plugins = 'a'\n", "config file {path}: key 'plugins' must be a list of strings, got 'a'"),
    ("density = 1.5\n", "config file {path}: key 'density': must be in (0, 1], got 1.5"),
    ("optimizer = 'lion'\n", "config file {path}: key 'optimizer': must be one of sgd, adam, adamw, got 'lion'"),
    ("[about]\nnote = 'x'\n", "config file {path}: unknown key 'about.note'; the about table holds description, "
                              "reference"),
    ("[plugin_options]\nx = 1\n", "config file {path}: key 'plugin_options' must be a table of plugin name -> "
                                  "table of option = value, got {{'x': 1}}"),
    ("epochs = \n", "config file {path}: not valid TOML: "),
    ("recipe = 'nope'\n", "unknown recipe 'nope'; available: snfs-mnist"),
])
def test_bad_files_give_one_line_naming_file_and_key(text, expected, tmp_path, capsys):
    path = _write(tmp_path, "run.toml", text)
    assert _error(capsys, "--config", path).startswith("sparsecore train: error: " + expected.format(path=path))


def test_a_flag_that_fixes_a_bad_file_value_wins_and_unreadable_files_are_one_line(tmp_path, capsys):
    path = _write(tmp_path, "run.toml", "epochs = 0\n")
    assert _config("--config", path, "--epochs", "2").epochs == 2
    assert "config file" not in _error(capsys, "--epochs", "0")  # a flag's own error names the flag
    missing = str(tmp_path / "missing.toml")
    assert _error(capsys, "--config", missing) == \
        f"sparsecore train: error: config file {missing}: cannot read it: No such file or directory"
    assert _error(capsys, "--config", _write(tmp_path, "run.json", "{}")) == \
        f"sparsecore train: error: config file {tmp_path / 'run.json'}: unknown format '.json'; use .toml, .yaml, .yml"
    assert "--config describes a new run" in _error(capsys, "--resume", str(tmp_path), "--config", path)


def test_dump_refuses_null_in_toml_but_not_in_yaml():
    config = TrainConfig(options={"prune_rate": None})
    with pytest.raises(sparsecore.ConfigurationError, match="options.prune_rate is null, which TOML cannot hold"):
        dump_config(config, "toml")
    pytest.importorskip("yaml", reason="PyYAML (the train extra) writes YAML config files")
    assert "prune_rate: null" in dump_config(config, "yaml")


def test_strings_round_trip_through_toml():
    text = 'quote " backslash \\ tab \t newline \n del \x7f unicode é'
    config = TrainConfig(run_name="x", options={"note": text, "odd key": 1})
    assert tomllib.loads(dump_config(config))["options"] == {"note": text, "odd key": 1}


# ----------------------------------------------------------------------
# plugin options by name
# ----------------------------------------------------------------------
def test_plugin_entries_accept_pairs_mappings_names_and_objects():
    obj = Counter()
    assert plugin_entries(["a", ("b", {"k": 1}), obj]) == [("a", {}), ("b", {"k": 1}), (obj, {})]
    assert plugin_entries({"a": {"k": 2}, "b": None}) == [("a", {"k": 2}), ("b", {})]
    assert plugin_entries("a") == [("a", {})]
    with pytest.raises(sparsecore.ConfigurationError, match="a plugin object takes no options"):
        plugin_entries([(obj, {"k": 1})])
    with pytest.raises(sparsecore.ConfigurationError, match="the options of plugin 'a' must be a mapping"):
        plugin_entries([("a", ["k"])])


def test_sparsifier_builds_named_plugins_with_their_options(counter_plugin, sparsifier_factory):
    sparsifier = sparsifier_factory("static", plugins=[("counter", {"every": 3})])
    assert [type(p) for p in sparsifier.plugins] == [Counter] and sparsifier.plugins[0].every == 3
    sparsifier = sparsifier_factory("static", plugins={"counter": {"every": 5}})
    assert sparsifier.plugins[0].every == 5
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"^plugin 'counter' does not accept option\(s\) \['evry'\]; accepted: \['every'\]$"):
        sparsifier_factory("static", plugins={"counter": {"evry": 5}})


def test_plugin_option_flags_parse_merge_and_validate(tmp_path, capsys):
    assert parse_plugin_options(["a.b.k=1", "x.flag=true", "x.some-key=[1]"]) == \
        {"a.b": {"k": 1}, "x": {"flag": True, "some_key": [1]}}
    path = _write(tmp_path, "run.toml", 'plugins = ["counter"]\n[plugin_options.counter]\nevery = 2\nother = 1\n')
    config = _config("--config", path, "--plugin-option", "counter.every=7")
    assert config.plugin_options == {"counter": {"every": 7, "other": 1}}
    assert config.plugin_specs() == [("counter", {"every": 7, "other": 1})]
    assert _config("--plugins", "counter", "other").plugin_specs() == ["counter", "other"]
    for argv, message in [
        (["--plugin-option", "counter=1"], "--plugin-option expects NAME.KEY=VALUE"),
        (["--plugins", "counter", "--plugin-option", "counter.k=1", "--plugin-option", "counter.k=2"],
         "--plugin-option counter.k is given twice"),
        (["--plugin-option", "counter.every=2"], "plugin 'counter' is not active in this run; add it with "
                                                 "--plugins counter (active: none)"),
    ]:
        assert message in _error(capsys, *argv)


def test_unknown_plugin_option_stops_the_run_with_one_line(counter_plugin, tmp_path, capsys):
    err = _error(capsys, "--algorithm", "static", "--dataset", "random", "--limit-train", "20", "--limit-test", "20",
                 "--epochs", "1", "--runs-dir", str(tmp_path), "--quiet", "--plugins", "counter",
                 "--plugin-option", "counter.evry=2")
    assert err == "sparsecore train: error: plugin 'counter' does not accept option(s) ['evry']; accepted: ['every']"


# ----------------------------------------------------------------------
# what config.json records
# ----------------------------------------------------------------------
def test_config_json_records_the_distribution_layer_densities_and_plugins(counter_plugin, tmp_path):
    result = run_training(TrainConfig(algorithm="set", distribution="erk", dataset="random", model="lenet-300-100",
                                      limit_train=40, limit_test=20, epochs=1, batch_size=20, threads=1, quiet=True,
                                      plots=False, runs_dir=str(tmp_path), plugins=["counter"],
                                      plugin_options={"counter": {"every": 4}}))
    recorded = json.loads((result.run_dir / "config.json").read_text())
    resolved = recorded["resolved"]
    layers = result.sparsifier.layers
    assert resolved["distribution"] == "erk" and resolved["density"] == pytest.approx(0.05)
    assert resolved["layers"] == {name: {"target_density": layer.target_density, "shape": list(layer.shape)}
                                  for name, layer in layers.items()}
    assert len({round(v["target_density"], 6) for v in resolved["layers"].values()}) == 3  # ERK: not uniform
    assert resolved["plugins"] == [
        {"name": "set", "kind": "algorithm", "distribution": "sparsecore", "version": sparsecore.__version__},
        # registered from code: attributed to the distribution that holds its module, none for a test file
        {"name": "counter", "kind": "plugin", "distribution": None, "version": None},
    ]
    assert recorded["config"]["plugin_options"] == {"counter": {"every": 4}}
    assert result.sparsifier.plugins[0].every == 4


def test_the_default_distribution_of_the_algorithm_is_recorded(tmp_path):
    class ErkStatic(sparsecore.Algorithm):
        name = "erk-static"
        engine_defaults = {"distribution": "erk"}

    registry.register_algorithm("erk-static", ErkStatic)
    try:
        result = run_training(TrainConfig(algorithm="erk-static", dataset="random", limit_train=20, limit_test=20,
                                          epochs=1, batch_size=20, threads=1, quiet=True, plots=False,
                                          runs_dir=str(tmp_path)))
    finally:
        registry.unregister("erk-static")
    recorded = json.loads((result.run_dir / "config.json").read_text())
    assert recorded["config"]["distribution"] is None  # the run asked for the algorithm's default ...
    assert recorded["resolved"]["distribution"] == "erk"  # ... and this is what it got


def test_dense_runs_record_no_engine(tmp_path):
    result = run_training(TrainConfig(dense=True, dataset="random", limit_train=20, limit_test=20, epochs=1,
                                      batch_size=20, threads=1, quiet=True, plots=False, runs_dir=str(tmp_path)))
    resolved = json.loads((result.run_dir / "config.json").read_text())["resolved"]
    assert (resolved["distribution"], resolved["layers"], resolved["plugins"]) == (None, None, [])


def test_distribution_of_names_installed_distributions():
    from sparsecore.algorithms import SetAlgorithm

    assert distribution_of(SetAlgorithm(), "set") == ("sparsecore", sparsecore.__version__)
    assert distribution_of(torch.nn.Linear(1, 1)) == ("torch", version("torch"))  # by the module's distribution


# ----------------------------------------------------------------------
# without the train extra
# ----------------------------------------------------------------------
def test_without_tqdm_and_matplotlib_the_run_reaches_its_summary(monkeypatch, tmp_path, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real_find_spec(name, *a))
    for name in ("tqdm", "tqdm.auto", "matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    argv = ["train", "--algorithm", "static", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
            "--batch-size", "20", "--epochs", "1", "--threads", "1", "--runs-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "note: no progress bars: tqdm is not installed (pip install tqdm, or 'sparsecore[train]' for progress bars, "
        "plots and YAML config files)",
        "note: no plots, matplotlib is not installed (pip install matplotlib)",
    ]
    assert "test accuracy:" in out and "run folder:" in out
    (run,) = tmp_path.iterdir()
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.md"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob("*.png"))
    assert cli.main([*argv, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # --quiet: not even the notices
