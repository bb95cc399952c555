"""The flat public API: ``vpr_ros.<name>`` for the everyday entry points, imported only when first used."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import vpr_ros

REPO = Path(__file__).resolve().parents[1]

# Where each name was importable from before the flat API, and where the docs pointed.
HOMES = {
    "load_extractor": "vpr_ros.extractor",
    "load_model": "vpr_ros.models",
    "PlaceMap": "vpr_ros.maps.place_map",
    "Pose": "vpr_ros.types",
    "PlaceRecognizer": "vpr_ros.loop_closure.recognizer",
    "build_map": "vpr_ros.bags.mapping",
    "recall_at_k": "vpr_ros.evaluation.recall",
}

IMPORT_BUDGET_S = 0.3


def test_all_names_exactly_the_entry_points() -> None:
    assert sorted(vpr_ros.__all__) == sorted(HOMES)


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_name_is_the_object_at_its_home(name: str) -> None:
    home = importlib.import_module(HOMES[name])
    assert getattr(vpr_ros, name) is getattr(home, name)
    assert name in dir(vpr_ros)
    namespace: dict[str, object] = {}
    exec(f"from vpr_ros import {name}", namespace)  # the form the docs use
    assert namespace[name] is getattr(home, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'PlaceMapp'"):
        vpr_ros.PlaceMapp  # noqa: B018
    with pytest.raises(ImportError):
        exec("from vpr_ros import PlaceMapp", {})


def _fresh_import() -> dict:
    code = """
import json, sys, time
t0 = time.perf_counter()
import vpr_ros
elapsed = time.perf_counter() - t0
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("vpr_ros."))
print(json.dumps({"elapsed": elapsed, "loaded": loaded, "file": vpr_ros.__file__}))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(res.stdout)


def test_import_alone_is_quick_and_loads_no_torch_nor_submodule() -> None:
    runs = [_fresh_import() for _ in range(3)]
    assert Path(runs[0]["file"]) == REPO / "vpr_ros" / "__init__.py"
    for run in runs:
        assert run["loaded"] == [], f"import vpr_ros loaded {run['loaded']}"
    best = min(run["elapsed"] for run in runs)  # best of three: a busy machine slows single runs
    assert best < IMPORT_BUDGET_S, f"import vpr_ros took {best:.3f} s (best of 3); budget {IMPORT_BUDGET_S} s"


def test_first_use_imports_the_home_module() -> None:
    code = ("import sys, vpr_ros; before = 'vpr_ros.types' in sys.modules; vpr_ros.Pose; "
            "print(before, 'vpr_ros.types' in sys.modules, 'Pose' in vars(vpr_ros))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.split() == ["False", "True", "True"]
