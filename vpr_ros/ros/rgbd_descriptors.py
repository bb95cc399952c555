"""ROS 2 node ``vpr_rgbd_descriptors``: this package's place descriptor in RTAB-Map's data path, so
that RTAB-Map finds loop closures with it and verifies them with its own registration.

It takes ``rgbd_sync``'s ``rtabmap_msgs/RGBDImage`` stream on ``rgbd_image``, describes the colour
image (raw ``rgb`` or JPEG ``rgb_compressed``, whichever is filled), sets ``global_descriptor`` (type 1,
:mod:`vpr_ros.rtabmap_descriptors`) and republishes the message, otherwise unchanged, on
``rgbd_image_vpr`` for RTAB-Map (``subscribe_rgbd``, ``rgbd_image:=rgbd_image_vpr``). A frame it cannot
describe is dropped and counted, never passed on without a descriptor: RTAB-Map asserts when two nodes
carry different numbers of global descriptors. As in the localize node, a one-frame slot between the
callback and one worker thread drops frames instead of delaying them. Setup: docs/rtabmap.md.

Run: ``python -m vpr_ros.ros.rgbd_descriptors --ros-args -p checkpoint:=model.pt``.
"""

from __future__ import annotations

import array
import threading
import time
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.type_support import check_for_type_support

from vpr_ros.errors import BadFrame, VprError
from vpr_ros.fast_path import DeviceFailure
from vpr_ros.image_msgs import image_to_rgb
from vpr_ros.ros import node_shell
from vpr_ros.ros.frame_slot import LatestSlot
from vpr_ros.ros.node_stats import REJECTED, NodeStats
from vpr_ros.ros.params import PARAMS, frame_size
from vpr_ros.ros.startup import StartupError, image_size_param, node_extractor
from vpr_ros.rtabmap_descriptors import DESCRIPTOR_TYPE, encode_descriptor

NODE_NAME = "vpr_rgbd_descriptors"
SPECS = {name: PARAMS[name] for name in ("checkpoint", "model_config", "image_size", "device", "precision",
                                         "reliable", "frame_size", "frame_timeout")}
# rgbd_sync's own output QoS; reliable matches RTAB-Map's rgbd_image subscription whichever reliability
# its `qos` parameter gives it (a best-effort publisher would never match a reliable subscription).
OUTPUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def rgbd_image_type() -> type:
    """``rtabmap_msgs/msg/RGBDImage`` with its type support loaded, or a :class:`StartupError` that
    says how to install it."""
    try:
        from rtabmap_msgs.msg import RGBDImage

        check_for_type_support(RGBDImage)
    except Exception as exc:  # ImportError, or type support libraries that do not load
        raise StartupError(f"the rtabmap_msgs message package is not available ({type(exc).__name__}: {exc}); "
                           "install it (sudo apt install ros-$ROS_DISTRO-rtabmap-msgs, or build rtabmap_msgs "
                           "in your workspace) and source the ROS setup file before starting this node") from exc
    return RGBDImage


def colour_image(msg: Any) -> Any:
    """The colour image of an ``RGBDImage``: raw ``rgb``, else ``rgb_compressed`` (rgbd_sync fills one)."""
    if len(msg.rgb.data):
        return msg.rgb
    if len(msg.rgb_compressed.data):
        return msg.rgb_compressed
    raise BadFrame("no colour image", "rgb and rgb_compressed are both empty")


def set_global_descriptor(msg: Any, descriptor: Any) -> None:
    """Fill ``msg.global_descriptor`` as RTAB-Map's own conversion would: type 1, no info, the
    compressed row, the image's header."""
    data = encode_descriptor(descriptor)  # raises before anything of the message is changed
    out = msg.global_descriptor
    out.header = msg.header
    out.type = DESCRIPTOR_TYPE
    out.info = array.array("B")
    out.data = array.array("B", data)


class RgbdDescriptorNode(Node):
    def __init__(self, rgbd_type: type) -> None:
        super().__init__(NODE_NAME)
        p = node_shell.declare_parameters(self, SPECS)
        self.extractor = node_extractor(p["checkpoint"], p["model_config"], image_size_param(p["image_size"]),
                                        p["device"], p["precision"])
        self.describer = node_shell.Describer(self, self.extractor, frame_size(p["frame_size"]))
        self.slot: LatestSlot = LatestSlot()
        self.topic_in = self.resolve_topic_name("rgbd_image")
        self.topic_out = self.resolve_topic_name("rgbd_image_vpr")
        self.stats = NodeStats(["frames received", "frames dropped (busy)", "frames published", REJECTED],
                               "frames published", float(p["frame_timeout"]), self.topic_in, readers={
            "frames received": lambda: self.slot.received, "frames dropped (busy)": lambda: self.slot.dropped})

        self.pub = self.create_publisher(rgbd_type, "rgbd_image_vpr", OUTPUT_QOS)
        self.create_subscription(rgbd_type, "rgbd_image", self._on_rgbd, node_shell.camera_qos(p["reliable"]))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        summary = f"{self.topic_in} -> {self.topic_out}"
        node_shell.publish_diagnostics(self, self.describer, self.stats, lambda: (summary, {}))
        self._worker = threading.Thread(target=self._work, name="vpr_rgbd_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"{self.extractor.model.cfg.describe()} on {self.extractor.device}: {self.topic_in} "
            f"({'reliable' if p['reliable'] else 'best effort'}) -> {self.topic_out} with type-1 global descriptors")

    def _on_rgbd(self, msg: Any) -> None:
        self.stats.received()
        self.slot.put((msg, time.monotonic()))

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        for param in params:  # the others are read-only, refused by rclpy itself
            if param.name == "frame_timeout":
                self.stats.frame_timeout = float(param.value)
        return SetParametersResult(successful=True)

    def _work(self) -> None:
        if not self.describer.warm_up():
            return
        while (item := self.slot.take()) is not None:
            msg, received = item
            try:
                self._describe(msg)
            except DeviceFailure:  # said by the describer, which shuts the node down
                self.stats.frame(rejected=True)
                return
            except VprError as exc:  # a bad image or a non-finite descriptor
                self.stats.frame(rejected=True)
                self.get_logger().warning(f"dropping a frame on {self.topic_in}: {exc}", throttle_duration_sec=5.0)
                continue
            except Exception as exc:  # keep serving: one failure must not stop the stream
                self.stats.frame(rejected=True)
                self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
                continue
            self.pub.publish(msg)
            self.stats.latency.add(time.monotonic() - received)
            self.stats.frame(rejected=False)

    def _describe(self, msg: Any) -> None:
        rgb = image_to_rgb(colour_image(msg))
        start = time.perf_counter()
        descriptor = self.describer.run(lambda: self.extractor.describe([rgb]))[0]
        self.stats.model_time.add(time.perf_counter() - start)
        set_global_descriptor(msg, descriptor)

    def close(self) -> bool:
        """Stop the worker (a frame it is describing is still published); False after a device failure."""
        self.slot.close()
        self._worker.join(timeout=30.0)
        return self.describer.failure is None


def main(args: list[str] | None = None) -> int:
    """0 on a clean stop, 1 when the node could not start (one fatal line says why)."""
    return node_shell.main(NODE_NAME, lambda: RgbdDescriptorNode(rgbd_image_type()), args)


def run() -> None:
    """Console entry point ``rgbd_descriptors``."""
    node_shell.exit_process(main())


if __name__ == "__main__":
    run()
