"""Start the vpr_localize node: ``ros2 launch vpr_ros localize.launch.py checkpoint:=... map:=...``.

Arguments override the params file; the same file works with
``python -m vpr_ros.ros.node --ros-args --params-file config/localize.yaml``.

The node gets ``FASTDDS_DEFAULT_PROFILES_FILE`` set to ``dds_profile`` (default: the shipped
``fastdds_large_frames.xml``, without which best-effort raw frames from a camera driver in another
process are mostly lost; see docs/node.md, "DDS"). An empty ``dds_profile`` leaves the variable as
the shell has it. Only the node is affected: give the camera driver the same profile.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vpr_ros")
    default_params = os.path.join(share, "config", "localize.yaml")
    default_dds_profile = os.path.join(share, "config", "fastdds_large_frames.xml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("checkpoint", description="SALAD / A²GC checkpoint file"),
        DeclareLaunchArgument("map", description="place map folder"),
        DeclareLaunchArgument("mode", default_value="localize", description="localize or slam"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="slam: nav_msgs/Odometry topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("dds_profile", default_value=default_dds_profile,
                              description="Fast DDS XML profile for the node (FASTDDS_DEFAULT_PROFILES_FILE); "
                                          "empty: leave the environment as it is"),
    ]
    dds_profile = LaunchConfiguration("dds_profile")
    # Set only for the node (the group scopes the environment) and only when dds_profile is not empty:
    # an empty FASTDDS_DEFAULT_PROFILES_FILE makes Fast DDS log an XML parser error.
    set_dds_profile = SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", dds_profile,
                                             condition=IfCondition(PythonExpression(["'", dds_profile, "' != ''"])))
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
    return LaunchDescription([*args, GroupAction([set_dds_profile, node])])
