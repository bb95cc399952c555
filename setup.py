"""Build script for the vpr_ros package (ament_python and plain pip)."""

import sys
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "vpr_ros"
HERE = Path(__file__).resolve().parent
README = HERE / "README.md"

# The repository's top-level training/ folder installs as vpr_ros.training, not as a generic
# top-level "training" (python -m vpr_ros.training, vpr-ros-train; needs the "train" extra).
# `colcon build --symlink-install` links only top-level packages into its build folder, where
# training/ is then missing: that build goes on without vpr_ros.training rather than failing.
TRAINING = {f"{PACKAGE}.training": "training"} if Path(__file__).with_name("training").is_dir() else {}
if not TRAINING:
    print(f"setup.py: no training/ beside {__file__}; {PACKAGE}.training is not installed", file=sys.stderr)

ROS_WHEELS = [
    "ros-kilted-rclpy",
    "ros-kilted-rmw-fastrtps-cpp",
    "ros-kilted-std-msgs",
    "ros-kilted-sensor-msgs",
    "ros-kilted-geometry-msgs",
    "ros-kilted-nav-msgs",
    "ros-kilted-visualization-msgs",
    "ros-kilted-diagnostic-msgs",
    "ros-kilted-std-srvs",
]

# What test/rtabmap_msgs/build.sh needs to generate ROS interfaces in the venv. The generator wheels'
# own requirements miss rosidl_core_generators, ament_cmake_include_directories and
# ament_cmake_ros_core, and ament_cmake_core's scripts import ament_package and catkin_pkg.
ROS_INTERFACE_BUILD = [
    "ros-kilted-rosidl-default-generators",
    "ros-kilted-rosidl-core-generators",
    "ros-kilted-ament-cmake",
    "ros-kilted-ament-cmake-include-directories",
    "ros-kilted-ament-cmake-ros-core",
    "ros-kilted-ament-package",
    "catkin-pkg",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Visual place recognition for ROS 2 with DINOv2 + SALAD, A2GC, MegaLoc or BoQ descriptors and FAISS",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    maintainer="vpr_ros maintainers",
    maintainer_email="maintainers@vpr-ros.org",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=[PACKAGE, f"{PACKAGE}.*"]), *TRAINING],
    package_dir=TRAINING,
    package_data={PACKAGE: ["synth/data/scenes/*", "synth/data/models/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml") + glob("config/*.xml"))),
    ],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
        "safetensors",  # MegaLoc's release format (timm needs it too)
        "numpy",
        "pillow",
        "opencv-python-headless",
        "faiss-cpu",
        "scipy",
        "rosbags",
        "rosbags-image",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "train": [
            "pytorch-lightning>=2.1",
            "pytorch-metric-learning>=2.3",
            "jsonargparse[signatures]>=4.27",
            "scikit-image>=0.22",  # bundled photos for the demo model's training data
        ],
        "ros": ROS_WHEELS,
        "gpu": ["faiss-gpu-cu12"],
        # vpr-ros export-onnx and running .onnx models (onnxruntime-gpu / a Jetson build for CUDA, TensorRT)
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
        "test": ["pytest", "hypothesis"],  # colcon test runs pytest when this extra names it
        "dev": ["pytest", "hypothesis", "ruff", "colcon-common-extensions", *ROS_INTERFACE_BUILD],
    },
    entry_points={
        "console_scripts": [
            "vpr-ros = vpr_ros.cli:main",
            "localize_node = vpr_ros.ros.node:run",
            "rgbd_descriptors = vpr_ros.ros.rgbd_descriptors:run",
            *(["vpr-ros-train = vpr_ros.training.__main__:console_main"] if TRAINING else []),
        ],
    },
    zip_safe=False,
)
