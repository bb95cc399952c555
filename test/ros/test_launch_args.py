"""Launch arguments -> node parameters (vpr_ros.ros.launch_args): plain Python, no ROS needed."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vpr_ros.errors import InputError
from vpr_ros.ros.launch_args import (
    DEMO_CHECKPOINT,
    LAUNCH_INTERNAL,
    MODES,
    PARAMETER_ARGUMENTS,
    TOP_K_RANGE,
    check_known,
    default_map,
    file_parameters,
    node_fqn,
    node_parameters,
    optional_file,
    parse_parameters,
    read_params_file,
    ros_home,
)
from vpr_ros.ros.params import PARAMS

REPO = Path(__file__).resolve().parents[2]
DECLARED = {*PARAMETER_ARGUMENTS, "odom_topic", "namespace", "params_file", "dds_profile"}
HOME = Path("/home/robot/.ros")


# -- what the launch file declares ---------------------------------------------------------------


def test_parameter_arguments_are_node_parameters_with_the_same_choices_and_ranges() -> None:
    """launch_args reads its choices and ranges from the node's parameter table (which imports no numpy
    or FAISS: the launch process may lack them, see the next test)."""
    assert set(PARAMETER_ARGUMENTS) == {"checkpoint", "model_config", "image_size", "map", "mode", "threshold",
                                        "top_k", "image_topic"}
    assert set(PARAMETER_ARGUMENTS) <= set(PARAMS)
    assert MODES == PARAMS["mode"].choices
    assert TOP_K_RANGE == PARAMS["top_k"].range


def test_the_demo_checkpoint_and_its_sidecar_are_installed_package_data() -> None:
    assert DEMO_CHECKPOINT.is_file() and DEMO_CHECKPOINT.with_suffix(".json").is_file()


def test_launch_args_imports_neither_ros_nor_the_model_stack() -> None:
    code = ("import sys, vpr_ros.ros.launch_args; "
            "print(sorted(m for m in ('rclpy', 'launch', 'numpy', 'torch', 'faiss') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# -- unknown arguments ---------------------------------------------------------------------------


def test_declared_and_launch_internal_configurations_are_accepted() -> None:
    check_known(DECLARED | {"launch-prefix", "emulate_tty"}, DECLARED)
    check_known(LAUNCH_INTERNAL, DECLARED)


def test_a_typo_is_an_error_naming_the_argument_it_resembles() -> None:
    with pytest.raises(InputError, match=r"unknown launch argument 'treshold' \(did you mean 'threshold'\?\)"):
        check_known({*DECLARED, "treshold"}, DECLARED)


def test_every_unknown_argument_is_named_with_the_declared_ones() -> None:
    with pytest.raises(InputError) as exc:
        check_known({"checkpoint", "zzz", "topk"}, DECLARED)
    message = str(exc.value)
    assert "unknown launch arguments 'topk' (did you mean 'top_k'?), 'zzz';" in message
    assert "takes: checkpoint, dds_profile, image_size" in message


# -- types ---------------------------------------------------------------------------------------


def test_unset_arguments_are_left_out() -> None:
    assert parse_parameters({name: "" for name in DECLARED}) == {}
    assert parse_parameters({"threshold": "  ", "top_k": ""}) == {}


def test_arguments_get_the_types_the_node_declares() -> None:
    params = parse_parameters({"threshold": "1", "top_k": "7", "image_size": "112,112", "mode": "slam",
                               "image_topic": "/camera/image_raw", "checkpoint": "run.ckpt", "odom_topic": "/odom"})
    assert params == {"threshold": 1.0, "top_k": 7, "image_size": [112, 112], "mode": "slam",
                      "image_topic": "/camera/image_raw", "checkpoint": "run.ckpt"}
    assert type(params["threshold"]) is float and type(params["top_k"]) is int  # a double refuses an int


@pytest.mark.parametrize("text", ["112,112", "[112, 112]", "[112,112]", " 112 , 112 ", "112x112", "112 112"])
def test_image_size_forms(text: str) -> None:
    assert parse_parameters({"image_size": text}) == {"image_size": [112, 112]}


def test_threshold_nan_is_an_explicit_use_the_maps_threshold() -> None:
    assert math.isnan(parse_parameters({"threshold": "nan"})["threshold"])


def test_paths_expand_the_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/robot")
    assert parse_parameters({"map": "~/office.map"}) == {"map": "/home/robot/office.map"}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("threshold", "abc", "threshold must be a number, got 'abc'"),
    ("top_k", "2.5", "top_k must be an integer from 1 to 100, got '2.5'"),
    ("top_k", "0", "top_k must be an integer from 1 to 100"),
    ("top_k", "101", "top_k must be an integer from 1 to 100"),
    ("image_size", "112", "image_size must be two integers, 'H,W' or '[H, W]', got '112'"),
    ("image_size", "112,112,3", "image_size must be two integers"),
    ("image_size", "-14,14", "image_size must be two integers"),
    ("mode", "mapping", "mode must be one of localize, slam, got 'mapping'"),
])
def test_bad_values_are_input_errors(name: str, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_parameters({name: text})


# -- defaults ------------------------------------------------------------------------------------


def test_no_arguments_and_the_shipped_params_file_run_slam_on_the_demo_model() -> None:
    file_values = read_params_file(str(REPO / "config" / "localize.yaml"), node_fqn(""))
    assert file_values["checkpoint"] == "" and file_values["mode"] == "localize"
    params, notes = node_parameters({}, file_values, HOME)
    assert params == {"checkpoint": str(DEMO_CHECKPOINT), "map": str(HOME / "vpr_ros" / "demo_salad.map"),
                      "mode": "slam"}
    assert len(notes) == 3 and "demo model" in notes[0]


def test_a_checkpoint_and_map_from_the_params_file_are_not_overridden() -> None:
    params, notes = node_parameters({"threshold": "0.45"}, {"checkpoint": "a.ckpt", "map": "a.map"}, HOME)
    assert params == {"threshold": 0.45} and notes == []


def test_a_given_map_keeps_the_params_files_mode() -> None:
    params, _ = node_parameters({"checkpoint": "/m/dino_salad.ckpt", "map": "office.map"}, {"mode": "localize"}, HOME)
    assert params == {"checkpoint": "/m/dino_salad.ckpt", "map": "office.map"}


def test_without_a_map_each_checkpoint_gets_its_own_default_map() -> None:
    params, _ = node_parameters({"checkpoint": "/m/dino_salad.ckpt"}, {}, HOME)
    assert params["map"] == str(HOME / "vpr_ros" / "dino_salad.map") and params["mode"] == "slam"
    params, _ = node_parameters({}, {"checkpoint": "/m/other.pt"}, HOME)
    assert params == {"map": str(HOME / "vpr_ros" / "other.map"), "mode": "slam"}
    assert default_map(HOME, "") == HOME / "vpr_ros" / "slam.map"


def test_an_explicit_mode_without_a_map_uses_the_default_map() -> None:
    params, _ = node_parameters({"mode": "localize"}, {}, HOME)
    assert params["mode"] == "localize" and params["map"] == str(HOME / "vpr_ros" / "demo_salad.map")


def test_ros_home_defaults_to_dot_ros_in_home() -> None:
    assert ros_home({"ROS_HOME": "/data/ros", "HOME": "/home/robot"}) == Path("/data/ros")
    assert ros_home({"ROS_HOME": "", "HOME": "/home/robot"}) == Path("/home/robot/.ros")
    assert ros_home({"HOME": "/home/robot"}) == Path("/home/robot/.ros")


# -- files ---------------------------------------------------------------------------------------


def test_file_parameters_follow_ros2_node_name_matching() -> None:
    data = yaml.safe_load("""
/**:
  ros__parameters: {top_k: 3, threshold: 0.5}
other_node:
  ros__parameters: {top_k: 99}
robot2:
  vpr_localize:
    ros__parameters: {map: r2.map}
/robot3/vpr_localize:
  ros__parameters: {map: r3.map}
/*/vpr_localize:
  ros__parameters: {threshold: 0.7}
""")
    assert file_parameters(data, node_fqn("")) == {"top_k": 3, "threshold": 0.5}
    assert file_parameters(data, node_fqn("robot2")) == {"top_k": 3, "threshold": 0.7, "map": "r2.map"}
    assert file_parameters(data, node_fqn("/robot3")) == {"top_k": 3, "threshold": 0.7, "map": "r3.map"}
    assert file_parameters(data, node_fqn("a/b")) == {"top_k": 3, "threshold": 0.5}
    assert file_parameters(None, node_fqn("")) == {}


def test_optional_files(tmp_path: Path) -> None:
    profile = tmp_path / "profile.xml"
    profile.write_text("<profiles/>")
    assert optional_file("dds_profile", str(profile)) == str(profile)
    assert optional_file("dds_profile", "none") is None and optional_file("dds_profile", "") is None
    with pytest.raises(InputError, match="dds_profile .*missing.xml does not exist"):
        optional_file("dds_profile", str(tmp_path / "missing.xml"))


def test_an_unreadable_params_file_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**: [unclosed")
    with pytest.raises(InputError, match="params_file .*bad.yaml cannot be read"):
        read_params_file(str(bad), node_fqn(""))
