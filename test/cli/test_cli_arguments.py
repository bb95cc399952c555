"""Every number and window of the command line is checked at parse time (a usage error naming the
option and what it accepts, exit status 2), inputs that are not regular files are refused instead of
read forever, ``calibrate`` never stores a threshold the map loader refuses, ``map-info`` prints any
string of a map escaped, and the player names what it cannot play.

The property test feeds generated values of every type and range to every numeric option: each
ends in a usage error or in a parsed value inside the option's range, never another exception.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpr_ros.cli import build_parser, main
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.types import Pose

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "vpr_ros" / "synth" / "data" / "models" / "demo_salad.pt"
SCENES = REPO / "vpr_ros" / "synth" / "data" / "scenes"
IMAGE = str(SCENES / "home.jpg")

DESCRIBE = ["describe", IMAGE, "--checkpoint", "c.pt", "--out", "o.npy"]
BUILD = ["build-map", "--bag", "b", "--image-topic", "/i", "--checkpoint", "c.pt", "--out", "m"]
CALIBRATE = ["calibrate", "m"]
QUERY = ["query", "m", "--checkpoint", "c.pt"]
EVAL = ["eval", "--checkpoint", "c.pt", "--datasets", "sped", "--data-root", "d"]
EXPORT = ["export-onnx", "c.pt", "--out", "x.onnx"]
MATCHES = ["visualize", "matches", "q.jpg", "r.jpg", "--checkpoint", "c.pt", "--out", "o.png"]
ATTENTION = ["visualize", "attention", "q.jpg", "--checkpoint", "c.pt", "--out", "o.png"]
HEATMAP = ["visualize", "heatmap", "q.jpg", "--checkpoint", "c.pt", "--out", "o.png"]
RETRIEVAL = ["visualize", "retrieval", "m", "q.jpg", "--checkpoint", "c.pt", "--out", "o.png"]


def _parse(argv: list[str]) -> tuple[object, str]:
    """(parsed namespace or the exit code, what argparse wrote to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(argv), err.getvalue()
        except SystemExit as exc:
            return exc.code, err.getvalue()


# -- the values of the issue, each with its message ------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (QUERY + ["--k", "1099511627776"], "argument --k: expected an integer in 1..1000, got '1099511627776'"),
    (QUERY + ["--k", "0"], "argument --k: expected an integer in 1..1000"),
    (EVAL + ["--ks", "0", "-3"], "argument --ks: expected an integer in 1..1000, got '0'"),
    (CALIBRATE + ["--min-separation", "nan"], "argument --min-separation: expected a finite number in [0, "),
    (CALIBRATE + ["--target-fpr", "1"], "argument --target-fpr: expected a finite number in (0, 1)"),
    (CALIBRATE + ["--min-distance=-inf"], "argument --min-distance: expected a finite number"),
    (BUILD + ["--start", "100", "--end", "1"], "--end 1 must be after --start 100: the window would be empty"),
    (BUILD + ["--start", "5", "--end", "5"], "--end 5 must be after --start 5"),
    (BUILD + ["--novelty", "1.5"], "argument --novelty: expected a finite number in [-1, 1]"),
    (BUILD + ["--max-pose-gap", "0"], "argument --max-pose-gap: expected a finite number in (0, "),
    (BUILD + ["--min-period", "1e400"], "argument --min-period: expected a finite number"),
    (DESCRIBE + ["--image-size", "14", "999992"], "argument --image-size: expected a multiple of 14 in 14..2044"),
    (DESCRIBE + ["--image-size", "100", "112"], "100 is not a multiple of the patch size 14; use 98 or 112"),
    (DESCRIBE + ["--batch-size", "0"], "argument --batch-size: expected an integer in 1..4096"),
    (DESCRIBE + ["--device", "gpu; rm -rf"], "argument --device: expected auto, cpu, cuda or cuda:N"),
    (EXPORT + ["--batch", "1e9"], "argument --batch: expected 'dynamic' or an integer in 1..4096"),
    (MATCHES + ["--top-k", "-1"], "argument --top-k: expected an integer in 1..100000"),
    (MATCHES + ["--threshold", "inf"], "argument --threshold: expected a finite number in [-1, 1]"),
    (HEATMAP + ["--channels", "1000000"], "argument --channels: expected an integer in 0..64"),
    (ATTENTION + ["--queries", "0"], "argument --queries: expected an integer in 1..64"),
    (RETRIEVAL + ["--positives", "-2"], "argument --positives: expected an integer in 0.."),
    (QUERY + ["--stamp", "nan"], "argument --stamp: expected a finite number"),
    (QUERY + ["--index", "-1"], "argument --index: expected an integer in 0.."),
])
def test_bad_numbers_are_usage_errors(argv: list[str], message: str) -> None:
    code, err = _parse(argv)
    assert code == 2 and message in err, err


def test_good_numbers_parse() -> None:
    args, _ = _parse(BUILD + ["--start", "1.5", "--end", "20", "--novelty", "0.9", "--image-size", "112", "224"])
    assert (args.start, args.end, args.novelty, args.image_size) == (1.5, 20.0, 0.9, [112, 224])
    args, _ = _parse(QUERY + ["--k", "1000", "--stamp", "1700000002.9", "--device", "cuda:1"])
    assert (args.k, args.stamp, args.device) == (1000, [1700000002.9], "cuda:1")
    assert _parse(EXPORT + ["--batch", "dynamic"])[0].batch is None


# -- property: generated values of every type and range --------------------------------------------


def _finite(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: isinstance(v, float) and math.isfinite(v) and lo <= v <= hi


def _int(lo: int, hi: int) -> Callable[[int], bool]:
    return lambda v: type(v) is int and lo <= v <= hi


def _side(v: int) -> bool:
    return _int(14, 2044)(v) and v % 14 == 0


# (argv, option, how many values it takes (0: one or more), what a parsed value must satisfy)
OPTIONS = [
    (DESCRIBE, "--image-size", 2, _side), (DESCRIBE, "--batch-size", 1, _int(1, 4096)),
    (BUILD, "--min-distance", 1, _finite(0, 1e7)), (BUILD, "--min-period", 1, _finite(0, 1e9)),
    (BUILD, "--novelty", 1, _finite(-1, 1)), (BUILD, "--start", 1, _finite(0, 1e9)),
    (BUILD, "--end", 1, _finite(0, 1e9)), (BUILD, "--max-pose-gap", 1, lambda v: _finite(0, 1e9)(v) and v > 0),
    (CALIBRATE, "--target-fpr", 1, lambda v: _finite(0, 1)(v) and 0 < v < 1),
    (CALIBRATE, "--min-separation", 1, _finite(0, 1e9)), (CALIBRATE, "--min-distance", 1, _finite(0, 1e7)),
    (QUERY, "--k", 1, _int(1, 1000)), (QUERY, "--stamp", 0, _finite(0, 9.3e9)), (QUERY, "--index", 0, _int(0, 2**62)),
    (EVAL, "--ks", 0, _int(1, 1000)), (EXPORT, "--batch", 1, lambda v: v is None or _int(1, 4096)(v)),
    (EXPORT, "--image-size", 2, _side), (MATCHES, "--top-k", 1, _int(1, 100_000)),
    (MATCHES, "--threshold", 1, _finite(-1, 1)), (ATTENTION, "--queries", 1, _int(1, 64)),
    (HEATMAP, "--channels", 1, _int(0, 64)), (RETRIEVAL, "--k", 1, _int(1, 1000)),
    (RETRIEVAL, "--positives", 0, _int(0, 2**62)),
]
VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "-0", "0x10", "1_000", " 7 ", "", "5.0", "1e9", "14",
                     "2044", "2058", "0.5", "dynamic", "1099511627776", "٣"]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(OPTIONS), values=st.lists(VALUES, min_size=1, max_size=3))
def test_every_numeric_option_ends_in_a_usage_error_or_a_value_in_range(case, values: list[str]) -> None:
    argv, option, nargs, accepts = case
    values = values[:nargs] if nargs else values
    parsed, err = _parse([*argv, option, *values])
    if isinstance(parsed, int):
        assert parsed == 2 and "error:" in err, err
        return
    got = getattr(parsed, option.lstrip("-").replace("-", "_"))
    assert all(accepts(v) for v in (got if isinstance(got, list) else [got])), (option, values, got)


@settings(max_examples=60, deadline=None)
@given(start=VALUES, end=VALUES)
def test_a_build_window_that_parses_is_not_empty(start: str, end: str) -> None:
    parsed, err = _parse([*BUILD, "--start", start, "--end", end])
    if isinstance(parsed, int):
        assert parsed == 2 and "error:" in err
    else:
        assert parsed.start < parsed.end


# -- inputs that are not regular files -----------------------------------------------------------------


@contextlib.contextmanager
def _fifo(path: Path) -> Iterator[Path]:
    """A FIFO; should a reader block on it, a writer opens it after 10 s, so a regression fails instead of hanging."""
    os.mkfifo(path)
    done = threading.Event()

    def release() -> None:
        if not done.wait(10):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        yield path
    finally:
        done.set()
        thread.join()
        assert time.monotonic() - t0 < 10, "a FIFO input was opened for reading"


def test_an_image_that_is_a_fifo_is_refused(tmp_path: Path, caplog) -> None:
    with _fifo(tmp_path / "frame.jpg") as fifo:
        assert main(["describe", str(fifo), "--checkpoint", str(DEMO), "--device", "cpu", "--out",
                     str(tmp_path / "d.npy")]) == 2
        assert "is a FIFO, not an image file" in caplog.text
        assert main(["visualize", "heatmap", str(fifo), "--checkpoint", str(DEMO), "--out",
                     str(tmp_path / "h.png")]) == 2
        assert f"image {fifo} is a FIFO, not a regular file" in caplog.text
        pm = PlaceMap.create(8)
        pm.add(np.eye(8, dtype=np.float32)[:2], [0.0, 1.0])
        pm.save(tmp_path / "map")
        assert main(["query", str(tmp_path / "map"), str(fifo), "--checkpoint", str(DEMO)]) == 2
    assert not (tmp_path / "d.npy").exists()


def test_a_config_or_bag_that_is_a_fifo_is_refused(tmp_path: Path, caplog) -> None:
    with _fifo(tmp_path / "options.json") as fifo:
        assert main(["describe", IMAGE, "--checkpoint", str(DEMO), "--config", str(fifo), "--out",
                     str(tmp_path / "d.npy")]) == 2
        assert "is a FIFO, not a JSON file" in caplog.text
    with _fifo(tmp_path / "drive.bag") as fifo:
        assert main(["build-map", "--bag", str(fifo), "--image-topic", "/i", "--checkpoint", str(DEMO), "--out",
                     str(tmp_path / "map")]) == 2
        assert "is not a bag: it is a FIFO" in caplog.text


# -- calibrate never stores what the loader refuses -----------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_calibrating_identical_frames_is_an_error_and_stores_nothing(tmp_path: Path, caplog) -> None:
    """A robot standing still for half an hour without odometry: every place the same image."""
    same = _unit(np.tile(np.random.default_rng(0).standard_normal((1, 64)), (30, 1)))
    pm = PlaceMap.create(64)
    pm.add(same, [100.0 * i for i in range(30)])
    pm.save(tmp_path / "map")
    before = (tmp_path / "map" / "manifest.json").read_bytes()
    assert main(["calibrate", str(tmp_path / "map")]) == 2
    assert "no threshold reaches a false-positive rate of 0.01" in caplog.text and "nothing was stored" in caplog.text
    assert (tmp_path / "map" / "manifest.json").read_bytes() == before
    assert PlaceMap.load(tmp_path / "map").calibration is None


def test_calibrating_with_no_separation_never_counts_a_place_as_its_own_non_revisit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pm = PlaceMap.create(64)
    pm.add(_unit(rng.standard_normal((40, 64))), [float(i) for i in range(40)],
           poses=[Pose((float(i), 0.0, 0.0)) for i in range(40)])
    pm.save(tmp_path / "map")
    assert main(["calibrate", str(tmp_path / "map"), "--min-separation", "0", "--min-distance", "0"]) == 0
    cal = PlaceMap.load(tmp_path / "map").calibration
    assert -1.0 <= cal["threshold"] < 0.9 and cal["min_separation_s"] == 0.0


# -- map-info prints any string escaped ----------------------------------------------------------------


def test_map_info_escapes_surrogates_and_control_characters(tmp_path: Path, capsys) -> None:
    from vpr_ros.maps.manifest import manifest_digest
    from vpr_ros.types import ModelIdentity

    pm = PlaceMap.create(8, model_id=ModelIdentity("salad", (112, 112), 8, "ab"))
    pm.add(np.eye(8, dtype=np.float32)[:2], [0.0, 1.0], sources=["drive.bag#/cam\x1b[2J\nforged line", ""])
    pm.save(tmp_path / "map")
    manifest_file = tmp_path / "map" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["model"]["arch"] = "salad\udc80\x1b]0;title\x07"  # a lone surrogate: printing it raw raises
    manifest["model"]["checkpoint_sha256"] = "\ud800" * 3
    manifest["manifest_sha256"] = manifest_digest(manifest)
    manifest_file.write_text(json.dumps(manifest))
    assert main(["map-info", str(tmp_path / "map")]) == 0
    out = capsys.readouterr().out
    assert "salad\\udc80\\x1b]0;title\\x07" in out and "\\ud800\\ud800\\ud800" in out
    assert "drive.bag#/cam\\x1b[2J\\nforged line: 1 places" in out and "\x1b" not in out
    assert not any(line.startswith("forged") for line in out.splitlines())


# -- the player ----------------------------------------------------------------------------------------


def test_player_refuses_a_bag_with_nothing_it_can_publish(tmp_path: Path, capsys) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from vpr_ros.bags.bag_files import typestore
    from vpr_ros.ros.player import main as play

    ts, msgtype = typestore("mcap"), "tf2_msgs/msg/TFMessage"
    with Writer(tmp_path / "tf", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/tf", msgtype, typestore=ts)
        for i in range(3):
            writer.write(conn, 1000 + i, ts.serialize_cdr(ts.types[msgtype](transforms=[]), msgtype))
    assert play([str(tmp_path / "tf"), "--no-wait"]) == 2
    err = capsys.readouterr().err
    assert "nothing to play, no topic has a message type the player publishes" in err
    assert "/tf  [tf2_msgs/msg/TFMessage]  3 messages" in err
    with pytest.raises(SystemExit) as info:
        play([str(tmp_path / "tf"), "--rate", "nan"])
    assert info.value.code == 2 and "argument --rate: expected a finite number in (0, 1000]" in capsys.readouterr().err
