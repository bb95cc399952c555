"""Output files: every writer of the project (descriptors, plots, montages, recall tables, exports) refuses a
target that exists and is not a regular file, before writing anything and without a stray temporary
file (the atomic write itself is tested in test/io/test_files.py).

The character-device case uses ``/dev/null`` only to see the refusal: the helper must raise before
it creates anything, and ``/dev/null`` is checked to still be a character device afterwards.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from support import assert_intact, leftovers, unwritable_targets

from vpr_ros.cli import main
from vpr_ros.errors import InputError
from vpr_ros.evaluation.recall import EvalResult, write_results
from vpr_ros.maps.place_map import PlaceMap

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"


@pytest.fixture
def targets(tmp_path: Path) -> dict[str, Path]:
    return unwritable_targets(tmp_path)


# -- every writer of the project goes through it ----------------------------------------------------


@pytest.mark.parametrize("kind", ["a FIFO", "a folder"])
def test_describe_out_is_refused_before_the_model_loads(targets: dict[str, Path], kind: str, caplog) -> None:
    code = main(["describe", str(SCENES / "home.jpg"), "--checkpoint", str(DEMO), "--device", "cpu",
                 "--out", str(targets[kind])])
    assert code == 2 and f"is {kind}, not a regular file" in caplog.text
    assert_intact(targets)


def test_describe_onto_dev_null_is_refused() -> None:
    code = main(["describe", str(SCENES / "home.jpg"), "--checkpoint", str(DEMO), "--device", "cpu",
                 "--out", "/dev/null"])
    assert code == 2 and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_query_montage_onto_a_folder_is_refused(tmp_path: Path, targets: dict[str, Path], caplog) -> None:
    pm = PlaceMap.create(8)
    pm.add(np.eye(8, dtype=np.float32)[:3], [0.0, 1.0, 2.0])
    pm.save(tmp_path / "map")
    code = main(["query", str(tmp_path / "map"), str(SCENES / "home.jpg"), "--checkpoint", str(DEMO), "--device",
                 "cpu", "--montage", str(targets["a folder"])])
    assert code == 2 and "is a folder, not a regular file" in caplog.text
    assert_intact(targets)


@pytest.mark.parametrize("kind", ["a FIFO", "a folder"])
def test_plots_refuse_it(tmp_path: Path, targets: dict[str, Path], kind: str, caplog) -> None:
    results = tmp_path / "recall.json"
    results.write_text(json.dumps({"model": {"1": 0.5, "5": 0.8}}))
    assert main(["visualize", "recall", str(results), "--out", str(targets[kind])]) == 2
    assert f"is {kind}, not a regular file" in caplog.text
    assert_intact(targets)
    from vpr_ros.plotting.recall import load_recall_json, plot_recall

    with pytest.raises(InputError, match=kind):
        plot_recall(load_recall_json(results), targets[kind])
    assert_intact(targets)


def test_recall_results_refuse_it(tmp_path: Path, targets: dict[str, Path]) -> None:
    result = EvalResult("sped", 3, 2, (1,), {1: 0.5}, np.zeros((2, 1), np.int64))
    out = tmp_path / "eval_out"
    out.mkdir()
    os.mkfifo(out / "results.csv")
    with pytest.raises(InputError, match="results.csv is a FIFO"):
        write_results([result], out)
    assert stat.S_ISFIFO(os.stat(out / "results.csv").st_mode) and not leftovers(out)
    file_not_folder = tmp_path / "eval_file"
    file_not_folder.write_text("x")
    with pytest.raises(InputError):
        write_results([result], file_not_folder)
    assert file_not_folder.read_text() == "x"


def test_exported_checkpoint_refuses_it(targets: dict[str, Path]) -> None:
    import torch

    from vpr_ros.models.loading import infer_config, read_model_options
    from vpr_ros.training.export import export_flat

    sd = torch.load(DEMO, weights_only=True)
    cfg = infer_config(sd, read_model_options(DEMO))
    out = targets["a FIFO"].with_suffix(".pt")
    os.mkfifo(out.with_suffix(".json"))
    with pytest.raises(InputError, match="a FIFO"):
        export_flat(sd, cfg, out)  # its .json is a FIFO: neither file is written
    assert not out.exists() and stat.S_ISFIFO(os.stat(out.with_suffix(".json")).st_mode)
    with pytest.raises(InputError, match="a folder"):
        export_flat(sd, cfg, targets["a folder"])
    assert_intact(targets)
