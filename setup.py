"""Build script for the vpr_ros package (ament_python and plain pip)."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "vpr_ros"
HERE = Path(__file__).resolve().parent
README = HERE / "README.md"

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

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Visual place recognition for ROS 2 with DINOv2 + SALAD / A2GC descriptors and FAISS",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    maintainer="vpr_ros maintainers",
    maintainer_email="maintainers@vpr-ros.org",
    license="Apache-2.0",
    python_requires=">=3.10",
    # training/ (python -m training, vpr-ros-train) needs the "train" extra.
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    package_data={PACKAGE: ["data/scenes/*", "data/models/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
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
        "test": ["pytest"],  # colcon test runs pytest when this extra names it
        "dev": ["pytest", "ruff", "colcon-common-extensions", "ros-kilted-ament-package"],
    },
    entry_points={
        "console_scripts": [
            "vpr-ros = vpr_ros.cli:main",
            "localize_node = vpr_ros.localize_node:main",
            "vpr-ros-train = training.__main__:main",
        ],
    },
    zip_safe=False,
)
