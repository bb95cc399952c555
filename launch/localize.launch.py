"""Start the vpr_localize node: ``ros2 launch vpr_ros localize.launch.py checkpoint:=... map:=...``.

Arguments override the params file; the same file works with
``python -m vpr_ros.ros.node --ros-args --params-file config/localize.yaml``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory("vpr_ros"), "config", "localize.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("checkpoint", description="SALAD / A²GC checkpoint file"),
        DeclareLaunchArgument("map", description="place map folder"),
        DeclareLaunchArgument("mode", default_value="localize", description="localize or slam"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="slam: nav_msgs/Odometry topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
    ]
    image = LaunchConfiguration("image_topic")
    node = Node(
        package="vpr_ros",
        executable="localize_node",
        name="vpr_localize",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": LaunchConfiguration("checkpoint"),
                "map": LaunchConfiguration("map"),
                "mode": LaunchConfiguration("mode"),
            },
        ],
        remappings=[
            ("image", image),
            ("image/compressed", [image, "/compressed"]),
            ("odom", LaunchConfiguration("odom_topic")),
        ],
    )
    return LaunchDescription([*args, node])
