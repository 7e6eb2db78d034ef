"""Registration of ``sr-ste`` and ``asp`` through the ``sparsecore`` entry point."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
import sparsecore
from sparsecore_nm import AspAlgorithm, SrSteAlgorithm, plugin


def test_the_entry_point_module_registers_both_algorithms():
    eps = [ep for ep in importlib.metadata.entry_points(group="sparsecore") if ep.name == "sparsecore-nm"]
    assert [ep.value for ep in eps] == ["sparsecore_nm.plugin"]
    registered = []
    plugin.sparsecore_register_algorithms(register=lambda name, factory: registered.append((name, factory)))
    assert registered == [("sr-ste", SrSteAlgorithm), ("asp", AspAlgorithm)]


@pytest.mark.slow
def test_the_installed_distribution_is_found_through_entry_points():
    env = {**os.environ, "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD": "0"}
    code = ("import sparsecore\n"
            "for name in ('sr-ste', 'asp'):\n"
            "    r = sparsecore.registry.algorithm(name)\n"
            "    print(r.name, r.factory.__name__, r.distribution)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["sr-ste SrSteAlgorithm sparsecore-nm", "asp AspAlgorithm sparsecore-nm"]


def test_both_declare_the_n_m_pattern_with_two_four_by_default():
    for cls in (SrSteAlgorithm, AspAlgorithm):
        assert cls.patterns == ("n:m",) and dict(cls.engine_defaults) == {"pattern": "2:4"}
        assert set(cls.patterns) <= set(sparsecore.algorithm.PATTERNS)
    assert SrSteAlgorithm.masking_policy == sparsecore.MaskingPolicy(False, False, False, False)
    assert AspAlgorithm.masking_policy == sparsecore.MaskingPolicy()
