"""Start the vpr_localize node: ``ros2 launch vpr_ros localize.launch.py [name:=value ...]``.

Without arguments it runs in slam mode on the bundled demo model with a map under
``$ROS_HOME/vpr_ros`` (``~/.ros`` by default), saved at shutdown. An argument left unset (empty) keeps
the params file's value (the same file works with ``python -m vpr_ros.ros.node --ros-args --params-file
config/localize.yaml``); an argument this file does not declare stops the launch, where launch itself
would ignore a typo. What the arguments become is decided in :mod:`vpr_ros.ros.launch_args`.

The node gets ``FASTDDS_DEFAULT_PROFILES_FILE`` set to ``dds_profile`` (default: the shipped
``fastdds_large_frames.xml``, without which best-effort raw frames from another process are mostly
lost; docs/node.md, "DDS"); ``dds_profile:=none`` leaves the shell's. Give the camera driver the same.
When the node exits the launch ends; when it fails (e.g. a missing checkpoint), ``ros2 launch`` exits non-zero.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vpr_ros.ros.launch_args import (
    PARAMETER_ARGUMENTS,
    check_known,
    end_launch_with_node,
    node_fqn,
    node_parameters,
    optional_file,
    read_params_file,
    ros_home,
)


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vpr_ros")
    args = [
        *(DeclareLaunchArgument(name, default_value="", description=doc) for name, doc in PARAMETER_ARGUMENTS.items()),
        DeclareLaunchArgument("odom_topic", default_value="",
                              description="slam: nav_msgs/Odometry topic, a remap of 'odom'; unset: no remap"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "localize.yaml"),
                              description="node parameters (YAML), overridden by the arguments above; none: no file"),
        DeclareLaunchArgument("dds_profile", default_value=os.path.join(share, "config", "fastdds_large_frames.xml"),
                              description="Fast DDS XML profile for the node (FASTDDS_DEFAULT_PROFILES_FILE); "
                                          "none: leave the environment as it is"),
    ]
    declared = frozenset(arg.name for arg in args)
    return LaunchDescription([*args, OpaqueFunction(function=_start_node, args=[declared])])


def _start_node(context: LaunchContext, declared: frozenset[str]) -> list:
    """Runs once the arguments are known: only then can unset ones be left out and types be given."""
    check_known(context.launch_configurations, declared)
    value = {name: LaunchConfiguration(name).perform(context) for name in declared}
    params_file = optional_file("params_file", value["params_file"])
    file_values = read_params_file(params_file, node_fqn(value["namespace"])) if params_file else {}
    params, notes = node_parameters(value, file_values, ros_home(os.environ))
    dds_profile = optional_file("dds_profile", value["dds_profile"])
    node = Node(
        package="vpr_ros",
        executable="localize_node",
        name="vpr_localize",
        namespace=value["namespace"],
        output="screen",
        parameters=[*([params_file] if params_file else []), params],
        remappings=[("odom", value["odom_topic"])] if value["odom_topic"] else [],
        on_exit=end_launch_with_node,
    )
    # The group scopes the environment to the node. An empty FASTDDS_DEFAULT_PROFILES_FILE would make
    # Fast DDS log an XML parser error, hence no variable at all without a profile.
    env = [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", dds_profile)] if dds_profile else []
    return [*(LogInfo(msg=f"vpr_localize: {note}") for note in notes), GroupAction([*env, node])]
