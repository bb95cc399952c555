"""Start the vpr_rgbd_descriptors node between rgbd_sync and RTAB-Map:
``ros2 launch vpr_ros rtabmap_descriptors.launch.py checkpoint:=model.pt [name:=value ...]``.

The node subscribes ``rgbd_image`` (argument ``rgbd_image``) and publishes the same messages with a
global descriptor on ``rgbd_image_vpr`` (argument ``rgbd_image_vpr``); give RTAB-Map
``subscribe_rgbd:=true`` and the remap ``rgbd_image:=<rgbd_image_vpr>`` (docs/rtabmap.md). Unset
(empty) parameter arguments keep the node's default; an undeclared argument stops the launch
(:mod:`vpr_ros.ros.launch_args`). ``FASTDDS_DEFAULT_PROFILES_FILE`` is set as in localize.launch.py
(``dds_profile``; large best-effort RGB-D frames need it): give rgbd_sync's process the same profile.
When the node exits the launch ends; when it fails (e.g. no checkpoint), ``ros2 launch`` exits non-zero.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vpr_ros.ros.launch_args import (
    DESCRIPTOR_ARGUMENTS,
    check_known,
    end_launch_with_node,
    optional_file,
    parse_parameters,
)


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vpr_ros")
    args = [
        *(DeclareLaunchArgument(name, default_value="", description=doc) for name, doc in DESCRIPTOR_ARGUMENTS.items()),
        DeclareLaunchArgument("rgbd_image", default_value="rgbd_image",
                              description="input: rtabmap_msgs/RGBDImage topic of rgbd_sync (a remap of 'rgbd_image')"),
        DeclareLaunchArgument("rgbd_image_vpr", default_value="rgbd_image_vpr",
                              description="output: the same messages with a global descriptor, for RTAB-Map"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("dds_profile", default_value=os.path.join(share, "config", "fastdds_large_frames.xml"),
                              description="Fast DDS XML profile for the node (FASTDDS_DEFAULT_PROFILES_FILE); "
                                          "none: leave the environment as it is"),
    ]
    declared = frozenset(arg.name for arg in args)
    return LaunchDescription([*args, OpaqueFunction(function=_start_node, args=[declared])])


def _start_node(context: LaunchContext, declared: frozenset[str]) -> list:
    """Runs once the arguments are known: only then can unset ones be left out and types be given."""
    check_known(context.launch_configurations, declared, "rtabmap_descriptors.launch.py")
    value = {name: LaunchConfiguration(name).perform(context) for name in declared}
    dds_profile = optional_file("dds_profile", value["dds_profile"])
    node = Node(
        package="vpr_ros",
        executable="rgbd_descriptors",
        name="vpr_rgbd_descriptors",
        namespace=value["namespace"],
        output="screen",
        parameters=[parse_parameters(value, DESCRIPTOR_ARGUMENTS)],
        remappings=[(topic, value[topic]) for topic in ("rgbd_image", "rgbd_image_vpr") if value[topic]],
        on_exit=end_launch_with_node,
    )
    # The group scopes the environment to the node. An empty FASTDDS_DEFAULT_PROFILES_FILE would make
    # Fast DDS log an XML parser error, hence no variable at all without a profile.
    env = [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", dds_profile)] if dds_profile else []
    return [GroupAction([*env, node])]
