"""Packaging checks run as tests (the ROS convention of linters-as-tests)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROS_DEPS = {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs",
            "diagnostic_msgs", "std_srvs"}


def test_package_xml_is_ament_python_format_3() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "vpr_ros"
    assert ROS_DEPS <= {e.text for e in root.findall("exec_depend")}
    assert root.find("export/build_type").text == "ament_python"
    email = root.find("maintainer").get("email")
    user, _, domain = email.partition("@")  # catkin_pkg rejects toy addresses such as a@b.c
    assert user and "." in domain and len(domain.rsplit(".", 1)[1]) >= 2
    assert (REPO / "resource" / "vpr_ros").is_file()
    assert "$base/lib/vpr_ros" in (REPO / "setup.cfg").read_text()


def test_installed_console_script_and_package_data() -> None:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "vpr-ros").exists()
    import vpr_ros

    data = Path(vpr_ros.__file__).parent / "synth" / "data"
    assert len(list((data / "scenes").glob("*.jpg"))) == 23
    assert sorted(p.name for p in (data / "models").iterdir()) == ["demo_salad.json", "demo_salad.pt"]


def test_ruff_is_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_checkpoints_are_only_loaded_weights_only() -> None:
    offenders = []
    sources = [*REPO.glob("vpr_ros/**/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("test/**/*.py"), REPO / "hubconf.py"]
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert not offenders


def test_launch_file_starts_the_installed_node_with_the_shipped_params() -> None:
    """launch_ros is not installable here: check the file's syntax and the names it relies on (what
    the arguments become is tested without ROS in ros/test_launch_args.py)."""
    from launch_files import launch_file_names

    from vpr_ros.ros import launch_args

    source, imported, declared = launch_file_names(REPO / "launch" / "localize.launch.py")
    assert 'executable="localize_node"' in source and 'name="vpr_localize"' in source
    assert "localize_node = vpr_ros.ros.node:run" in (REPO / "setup.py").read_text()
    for shipped in ("localize.yaml", "fastdds_large_frames.xml"):
        assert f'"{shipped}"' in source and (REPO / "config" / shipped).is_file()
    assert (REPO / "config" / "localize.yaml").read_text().splitlines()[3:].count("/**:") == 1
    assert imported and all(hasattr(launch_args, name) for name in imported)
    assert declared | set(launch_args.PARAMETER_ARGUMENTS) == {
        "checkpoint", "model_config", "image_size", "map", "mode", "threshold", "top_k", "image_topic", "odom_topic",
        "namespace", "params_file", "dds_profile"}
    assert "check_known(context.launch_configurations" in source and "on_exit=end_launch_with_node" in source
