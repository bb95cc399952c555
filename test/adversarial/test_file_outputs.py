"""Output files: every atomic write (descriptors, plots, montages, recall tables, exports) refuses a
target that exists and is not a regular file, before writing anything and without a stray temporary
file; a symbolic link keeps pointing at the file that gets the new content.

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

from vpr_ros.cli import main
from vpr_ros.errors import InputError
from vpr_ros.evaluation.recall import EvalResult, write_results
from vpr_ros.io_files import atomic_output, output_path, write_atomic
from vpr_ros.maps.place_map import PlaceMap

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@pytest.fixture
def targets(tmp_path: Path) -> dict[str, Path]:
    """A FIFO and a folder that must survive every write aimed at them."""
    fifo, folder = tmp_path / "pipe.png", tmp_path / "folder.png"
    os.mkfifo(fifo)
    folder.mkdir()
    (folder / "keep.txt").write_text("kept")
    return {"a FIFO": fifo, "a folder": folder}


def _intact(targets: dict[str, Path]) -> None:
    assert stat.S_ISFIFO(os.stat(targets["a FIFO"]).st_mode)
    assert (targets["a folder"] / "keep.txt").read_text() == "kept"
    assert not _leftovers(targets["a FIFO"].parent)


@pytest.mark.parametrize("kind", ["a FIFO", "a folder"])
def test_write_atomic_refuses_what_is_not_a_regular_file(targets: dict[str, Path], kind: str) -> None:
    with pytest.raises(InputError, match=f"is {kind}, not a regular file"):
        write_atomic(targets[kind], b"data")
    _intact(targets)


def test_a_character_device_is_refused_before_anything_is_written() -> None:
    with pytest.raises(InputError, match="is a character device, not a regular file"):
        write_atomic("/dev/null", b"data")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in os.listdir("/dev") if p.startswith(".null.tmp")]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    out.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(out, fail)
    assert out.read_text() == "old" and not _leftovers(tmp_path)


def test_a_symbolic_link_keeps_pointing_at_the_file_it_names(tmp_path: Path) -> None:
    real, link = tmp_path / "real.npy", tmp_path / "link.npy"
    real.write_bytes(b"old")
    link.symlink_to(real)
    write_atomic(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_a_parent_that_is_a_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder|cannot write"):
        write_atomic(tmp_path / "file" / "out.png", b"data")
    with pytest.raises(InputError):
        with atomic_output(tmp_path / "file" / "deeper" / "out.png"):
            pass


def test_output_path_changes_nothing(tmp_path: Path) -> None:
    assert output_path(tmp_path / "new" / "x.png") == (tmp_path / "new" / "x.png").resolve()
    assert not (tmp_path / "new").exists()


# -- every writer of the project goes through it ----------------------------------------------------


@pytest.mark.parametrize("kind", ["a FIFO", "a folder"])
def test_describe_out_is_refused_before_the_model_loads(targets: dict[str, Path], kind: str, caplog) -> None:
    code = main(["describe", str(SCENES / "home.jpg"), "--checkpoint", str(DEMO), "--device", "cpu",
                 "--out", str(targets[kind])])
    assert code == 2 and f"is {kind}, not a regular file" in caplog.text
    _intact(targets)


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
    _intact(targets)


@pytest.mark.parametrize("kind", ["a FIFO", "a folder"])
def test_plots_refuse_it(tmp_path: Path, targets: dict[str, Path], kind: str, caplog) -> None:
    results = tmp_path / "recall.json"
    results.write_text(json.dumps({"model": {"1": 0.5, "5": 0.8}}))
    assert main(["visualize", "recall", str(results), "--out", str(targets[kind])]) == 2
    assert f"is {kind}, not a regular file" in caplog.text
    _intact(targets)
    from vpr_ros.plotting import load_recall_json, plot_recall

    with pytest.raises(InputError, match=kind):
        plot_recall(load_recall_json(results), targets[kind])
    _intact(targets)


def test_recall_results_refuse_it(tmp_path: Path, targets: dict[str, Path]) -> None:
    result = EvalResult("sped", 3, 2, (1,), {1: 0.5}, np.zeros((2, 1), np.int64))
    out = tmp_path / "eval_out"
    out.mkdir()
    os.mkfifo(out / "results.csv")
    with pytest.raises(InputError, match="results.csv is a FIFO"):
        write_results([result], out)
    assert stat.S_ISFIFO(os.stat(out / "results.csv").st_mode) and not _leftovers(out)
    file_not_folder = tmp_path / "eval_file"
    file_not_folder.write_text("x")
    with pytest.raises(InputError):
        write_results([result], file_not_folder)
    assert file_not_folder.read_text() == "x"


def test_exported_checkpoint_refuses_it(targets: dict[str, Path]) -> None:
    import torch

    from vpr_ros.extractor import read_model_options
    from vpr_ros.models.loading import infer_config
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
    _intact(targets)
