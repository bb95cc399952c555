"""ROS 2 node ``vpr_localize``: camera frames in; place matches, loop closures and pose priors out.

``~/loop_closure`` (LIO-SAM's ``[t_current, t_previous]``) comes only in slam mode, only for places of
this run, at most one per ``loop_pair_period``; ``~/global_pose`` (RTAB-Map's pose prior) only in
localize mode, where the map frame is fixed, and only for cameras whose mounting is known.

A thin shell around :class:`vpr_ros.loop_closure.recognizer.PlaceRecognizer` (keyframe gate, descriptor,
loop-closure decision, ``~/matches`` record, pose prior, slam map upkeep).

Callbacks only drop the message into a one-frame slot per camera (the newest wins, the replaced one is
counted as dropped); one worker thread describes the waiting frames of all cameras in one batch, so the
node never builds a backlog however slow the model is.

Run: ``python -m vpr_ros.ros.node --ros-args --params-file config/localize.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import ColorRGBA, Float64MultiArray, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from vpr_ros.errors import MapSaveError, VprError
from vpr_ros.fast_path import DeviceFailure
from vpr_ros.image_msgs import image_to_rgb, stamp_of
from vpr_ros.loop_closure.loop_pairs import PairPacer, pair_seconds
from vpr_ros.loop_closure.matches import MatchPrior, global_pose_prior
from vpr_ros.loop_closure.recognizer import CameraFrame, Outcome, PlaceRecognizer
from vpr_ros.maps.place_map import PlaceMap
from vpr_ros.poses import pose_from_msg
from vpr_ros.ros import node_shell
from vpr_ros.ros import params as node_params
from vpr_ros.ros.frame_slot import LatestSlot
from vpr_ros.ros.node_stats import REJECTED, SAVE_FAILURES, NodeStats
from vpr_ros.ros.params import PARAMS, RUNTIME, Camera, loop_closure_config
from vpr_ros.ros.startup import StartupError, image_size_param, node_extractor
from vpr_ros.types import Pose, ns_to_pair, to_ns

NODE_NAME = "vpr_localize"
WITHHELD = "loop pairs withheld (place of the loaded map)"  # slam: accepted matches of places loaded from the map
COUNTERS = ["frames received", "frames dropped (busy)", "frames processed", "batches described", REJECTED,
            "frames skipped (keyframe period)", SAVE_FAILURES, "poses rejected",
            "global poses skipped (no camera frame)", "global poses skipped (no camera_pose)",
            "loop pairs held back (rate)", "loop pairs superseded (rate)", WITHHELD]


class LocalizeNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = node_shell.declare_parameters(self, PARAMS)
        p["cameras"] = list(p["cameras"] or [])
        self.mode: str = p["mode"]
        self.map_frame: str = p["map_frame"]
        self.base_frame: str = p["base_frame"]
        self.map_path = Path(p["map"]) if p["map"] else None
        # one writer per map, held until the process ends (before the model loads: a second writer fails fast)
        self.map_lock = PlaceMap.lock(self.map_path) if self.mode == "slam" and self.map_path else None
        self.cameras = self._camera_list(p)
        self.mounts = {cam.name: cam.base_to_camera for cam in self.cameras}
        # image_size not set: the existing map's size, else the checkpoint's .json, else 322x322
        self.extractor = node_extractor(p["checkpoint"], p["model_config"],
                                        PlaceMap.input_size(self.map_path, image_size_param(p["image_size"])),
                                        p["device"], p["precision"], batch_size=len(self.cameras))
        self.describer = node_shell.Describer(self, self.extractor, node_params.frame_size(p["frame_size"]),
                                              len(self.cameras))
        if self.mode == "localize" and self.map_path is None:
            raise StartupError("localize mode needs parameter 'map' (a map folder built earlier)")
        self.map = PlaceMap.open(self.map_path, self.extractor.identity, p["index"]) if self.mode == "slam" else \
            PlaceMap.load(self.map_path, self.extractor.identity)
        self.calibrated = None if self.map.calibration is None else float(self.map.calibration["threshold"])
        config = loop_closure_config(p, self.mode, self.calibrated)
        self.recognizer = PlaceRecognizer(self.extractor, self.map, config, self.mode,
                                          float(p["min_period"]), float(p["pose_max_gap"]))

        self.slot: LatestSlot = LatestSlot()  # one slot per camera
        self.pairs = PairPacer(float(p["loop_pair_period"]))  # slam: ~/loop_closure at LIO-SAM's rate
        self._lock = threading.Lock()  # guards the pacer (worker and timer)
        topics = {cam.name: self._image_topics(cam.image_topic) for cam in self.cameras}
        listening = " and ".join(t for pair in topics.values() for t in pair)
        self.stats = NodeStats(COUNTERS, "frames processed", float(p["frame_timeout"]),
                               {name: " and ".join(pair) for name, pair in topics.items()}, readers={
            "frames received": lambda: self.slot.received, "frames dropped (busy)": lambda: self.slot.dropped,
            "frames skipped (keyframe period)": lambda: self.recognizer.skipped["period"],
            "loop pairs held back (rate)": lambda: self.pairs.held_back,
            "loop pairs superseded (rate)": lambda: self.pairs.superseded})

        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_loop = self.create_publisher(Float64MultiArray, "~/loop_closure", 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/match_pose", 10)
        self.pub_global = self.create_publisher(PoseWithCovarianceStamped, "~/global_pose", 10)
        self.pub_matches = self.create_publisher(String, "~/matches", 10)
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", latched)

        qos = node_shell.camera_qos(p["reliable"])
        for cam in self.cameras:
            raw, compressed = topics[cam.name]
            self.create_subscription(Image, raw, lambda m, c=cam, t=raw: self._on_image(m, c, t), qos)
            self.create_subscription(CompressedImage, compressed,
                                     lambda m, c=cam, t=compressed: self._on_image(m, c, t), qos)
        if self.mode == "slam":
            self.create_subscription(Odometry, "odom", self._on_pose, 50)
            self.create_subscription(PoseStamped, "pose", self._on_pose, 50)
        self.create_service(Trigger, "~/save_map", self._on_save)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        node_shell.publish_diagnostics(self, self.describer, self.stats, lambda: (
            f"{self.mode}, {len(self.map)} places", {"map places": len(self.map)}))
        if self.mode == "slam":
            self.create_timer(0.1, self._release_pair)
        self._warn_global_pose()

        self._worker = threading.Thread(target=self._work, name="vpr_worker", daemon=True)
        self._worker.start()
        self._places: Marker | None = None
        self._places_built = 0.0
        self._publish_markers()
        self.get_logger().info(
            f"{self.mode} mode, {self.extractor.model.cfg.describe()} on {self.extractor.device}, "
            f"map {self.map_path or '(in memory)'} with {len(self.map)} places, threshold {config.threshold:.4f}"
            f"{' (calibrated)' if math.isnan(p['threshold']) and self.calibrated is not None else ''}, "
            f"listening on {listening}"
        )

    # -- setup ---------------------------------------------------------------------------------

    def _camera_list(self, p: dict[str, Any]) -> list[Camera]:
        """The cameras: one on ``image_topic``, or the named ones of ``cameras`` with their own parameters
        (``<name>.image_topic``, ``<name>.camera_frame``, ``<name>.camera_pose``)."""
        try:
            if not p["cameras"]:
                pose = node_params.camera_pose("camera_pose", p["camera_pose"])
                return [Camera("", p["image_topic"], p["camera_frame"], pose)]
            node_params.check_camera_names(p["cameras"])
            cameras = []
            for name in p["cameras"]:
                values = {}
                for key in node_params.CAMERA_PARAMS:
                    spec = PARAMS[key]
                    default = f"{name}/image" if key == "image_topic" else spec.default
                    desc = ParameterDescriptor(description=f"camera {name}: {spec.description}", read_only=True)
                    values[key] = node_shell.declare(self, f"{name}.{key}", default, desc, spec)
                cameras.append(Camera(name, values["image_topic"], values["camera_frame"],
                                      node_params.camera_pose(f"{name}.camera_pose", values["camera_pose"])))
            return cameras
        except VprError as exc:
            raise StartupError(str(exc)) from exc

    def _warn_global_pose(self) -> None:
        """Say at start which cameras cannot give ``~/global_pose`` (their mounting is unknown)."""
        if self.mode != "localize":
            return
        unmounted = [c.name or c.image_topic for c in self.cameras
                     if c.base_to_camera is None and c.frame != self.base_frame]
        if unmounted:
            self.get_logger().warning(
                f"no ~/global_pose for {', '.join(unmounted)}: camera_pose is the identity, so the camera would be "
                f"taken to be the base; set camera_pose (camera in '{self.base_frame}'), or camera_frame: "
                f"{self.base_frame} if the camera really is at the base")

    def _image_topics(self, name: str) -> tuple[str, str]:
        """The raw topic and its ``/compressed`` sibling, both after remapping: a remap of the raw
        topic (``-r image:=/camera/image_raw``) moves the compressed one with it, unless the
        compressed one has a remap of its own."""
        raw = self.resolve_topic_name(name)
        compressed = self.resolve_topic_name(f"{name}/compressed")
        if compressed == self.resolve_topic_name(f"{name}/compressed", only_expand=True):
            compressed = f"{raw}/compressed"
        return raw, compressed

    # -- callbacks -------------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage, camera: Camera, topic: str) -> None:
        self.stats.received(camera.name)
        self.slot.put((msg, time.monotonic(), topic, camera), key=camera.name)

    def _on_pose(self, msg: Odometry | PoseStamped) -> None:
        try:
            stamp, position, orientation, frame = pose_from_msg(msg)
            self.recognizer.poses.add(stamp, position, orientation, frame or self.map_frame)
        except VprError as exc:  # NaN, a zero quaternion: the sample is dropped, the stream goes on
            self.stats.count("poses rejected")
            self.get_logger().warning(f"dropping a pose: {exc}", throttle_duration_sec=5.0)

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        values = {name: self.get_parameter(name).value for name in RUNTIME}
        values.update((param.name, param.value) for param in params if param.name in RUNTIME)
        try:
            config = loop_closure_config(values, self.mode, self.calibrated)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.recognizer.configure(config, float(values["min_period"]))
        with self._lock:
            self.pairs.configure(float(values["loop_pair_period"]))
        self.stats.frame_timeout = float(values["frame_timeout"])
        return SetParametersResult(successful=True)

    def _on_save(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.map_path is None:
            response.success, response.message = False, "no 'map' parameter: nowhere to save"
        elif self.mode == "localize":
            response.success, response.message = False, "localize mode uses a read-only map"
        else:
            response.success, response.message = self._save()
        return response

    def _save(self) -> tuple[bool, str]:
        """Save the map; a failure (disk full, read-only) keeps every place in memory for the next try."""
        try:
            self.map.save(self.map_path)
        except MapSaveError as exc:
            self.stats.saved(str(exc))
            self.get_logger().error(str(exc))
            return False, str(exc)
        self.stats.saved(None)
        return True, f"saved {len(self.map)} places to {self.map_path}"

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Forget the loop-closure consistency history and the keyframe timer (e.g. after the
        robot was carried elsewhere); the map and the diagnostic totals stay."""
        self.recognizer.reset()
        response.success, response.message = True, "consistency history cleared"
        return response

    # -- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        if not self.describer.warm_up():
            return
        while items := self.slot.take_all():
            frames, received = [], []
            for msg, when, topic, camera in items:  # each frame is gated and decoded on its own
                try:
                    if frame := self._decode(msg, topic, camera):
                        frames.append(frame)
                        received.append(when)
                except VprError as exc:  # a bad frame: counted and dropped, the other cameras' frames go on
                    self.stats.frame(rejected=True)
                    self.get_logger().warning(f"dropping a frame on {topic}: {exc}", throttle_duration_sec=5.0)
            if not frames:
                continue
            try:
                self._process(frames, received)
            except DeviceFailure:  # said by the describer, which shuts the node down
                self.stats.frame(rejected=True, n=len(frames))
                return
            except VprError as exc:  # a non-finite descriptor: counted and dropped
                self.stats.frame(rejected=True, n=len(frames))
                self.get_logger().warning(f"dropping {len(frames)} frame(s): {exc}", throttle_duration_sec=5.0)
            except Exception as exc:  # keep serving: one failure must not stop localisation
                self.stats.frame(rejected=True, n=len(frames))
                self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)

    def _decode(self, msg: Image | CompressedImage, topic: str, camera: Camera) -> CameraFrame | None:
        """The frame for the recognizer, or None when the camera's keyframe gate skips it (before decoding)."""
        stamp_ns = to_ns(stamp_of(msg))
        if not self.recognizer.wants(stamp_ns, camera.name):
            return None
        return CameraFrame(image_to_rgb(msg), stamp_ns, camera.frame or msg.header.frame_id, topic, camera.name)

    def _process(self, frames: list[CameraFrame], received: list[float]) -> None:
        outcomes = self.recognizer.process_batch(frames, self.describer.run)
        self.stats.count("batches described")  # with several cameras, one per batch of their waiting frames
        for outcome, when in zip(outcomes, received, strict=True):
            self.stats.model_time.add(outcome.model_seconds)
            self._publish(outcome)
            self.stats.frame(rejected=False)
            self.stats.latency.add(time.monotonic() - when)

    # -- publishing ------------------------------------------------------------------------------

    def _publish(self, outcome: Outcome) -> None:
        self.pub_matches.publish(String(data=json.dumps(outcome.record)))
        accepted = outcome.decision.accepted
        if accepted is None:
            return
        if outcome.loop_pair is not None:
            with self._lock:
                self._send_pair(self.pairs.offer(outcome.loop_pair, time.monotonic()))
        elif self.mode == "slam":
            self.stats.count(WITHHELD)
        place = accepted.place
        stamp = ns_to_pair(outcome.frame.stamp_ns)
        if outcome.prior is not None:
            self.pub_pose.publish(self._pose_msg(outcome.prior, stamp, outcome.prior.pose.frame_id or self.map_frame))
            if self.mode == "localize":
                self._publish_global_pose(outcome.prior, outcome.frame.frame_id, place.camera, stamp)
        self._publish_markers(place.pose, outcome.current)

    def _publish_global_pose(self, prior: MatchPrior, frame_id: str, seen_by: str, stamp: tuple[int, int]) -> None:
        """RTAB-Map's convention: the pose of the query camera (taken to stand where the camera that saw the
        place stood), in the camera's frame_id, at the image's stamp."""
        pose, reason = global_pose_prior(prior, frame_id, seen_by, self.mounts, self.base_frame)
        if pose is not None:
            self.pub_global.publish(self._pose_msg(pose, stamp, frame_id))
            return
        self.stats.count(f"global poses skipped ({reason})")
        self.get_logger().warning(
            "no ~/global_pose: " + ("the image has no header.frame_id; set camera_frame" if reason == "no camera frame"
                                    else f"camera_pose of camera '{seen_by}' is not set"), throttle_duration_sec=30.0)

    def _release_pair(self) -> None:
        """Send a loop-closure pair that was held back once LIO-SAM's next tick has come."""
        with self._lock:
            self._send_pair(self.pairs.due(time.monotonic()))

    def _send_pair(self, pair: tuple[int, int] | None) -> None:
        if pair is not None:
            self.pub_loop.publish(Float64MultiArray(data=pair_seconds(pair)))

    @staticmethod
    def _pose_msg(prior: MatchPrior, stamp: tuple[int, int], frame_id: str) -> PoseWithCovarianceStamped:
        out = PoseWithCovarianceStamped()
        out.header.stamp.sec, out.header.stamp.nanosec = stamp
        out.header.frame_id = frame_id
        pp = out.pose.pose
        pp.position.x, pp.position.y, pp.position.z = prior.pose.position
        pp.orientation.x, pp.orientation.y, pp.orientation.z, pp.orientation.w = prior.pose.orientation
        out.pose.covariance = prior.covariance.reshape(-1).tolist()
        return out

    def _places_marker(self) -> Marker:
        """All places with a pose, rebuilt at most every 2 s (slam maps grow every keyframe)."""
        now = time.monotonic()
        if self._places is None or (self.mode == "slam" and now - self._places_built > 2.0):
            positions = self.map.positions()[self.map.ids()]
            positions = positions[~np.isnan(positions[:, 0])]
            marker = Marker(type=Marker.SPHERE_LIST, action=Marker.ADD, ns="places", id=0)
            marker.header.frame_id = self.map_frame
            marker.scale.x = marker.scale.y = marker.scale.z = 0.3
            marker.color = ColorRGBA(r=0.2, g=0.5, b=1.0, a=0.8)
            marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in positions]
            self._places, self._places_built = marker, now
        return self._places

    def _publish_markers(self, matched: Pose | None = None, current: Pose | None = None) -> None:
        """One latched MarkerArray with the whole state, so a late RViz sees places and match."""
        markers = [self._places_marker()]
        if matched is not None:
            marker = Marker(type=Marker.LINE_LIST if current else Marker.SPHERE_LIST, action=Marker.ADD, ns="match",
                            id=1)
            marker.header.frame_id = matched.frame_id or self.map_frame
            marker.scale.x = marker.scale.y = marker.scale.z = 0.15 if current else 0.6
            marker.color = ColorRGBA(r=1.0, g=0.3, b=0.1, a=1.0)
            ends = [current.position, matched.position] if current else [matched.position]
            marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in ends]
            markers.append(marker)
        self.pub_markers.publish(MarkerArray(markers=markers))

    # -- shutdown --------------------------------------------------------------------------------

    def close(self) -> bool:
        """Stop the worker and, in slam mode, save the map; False if the map could not be saved where
        asked (it is then written to a rescue folder in the temporary directory, so no place is lost)."""
        self.slot.close()
        self._worker.join(timeout=30.0)
        if self.mode != "slam" or self.map_path is None:
            return self.describer.failure is None
        saved, message = self._save()
        if saved:
            self.get_logger().info(message)
            return self.describer.failure is None
        rescue = Path(tempfile.gettempdir()) / f"vpr_ros_rescue_{os.getpid()}_{self.map_path.name}"
        try:
            self.map.save(rescue)
            self.get_logger().error(f"the map could not be saved to {self.map_path}; its {len(self.map)} places "
                                    f"were saved to {rescue} instead")
        except MapSaveError as exc:
            self.get_logger().fatal(f"the map could not be saved anywhere; {len(self.map)} places lost: {exc}")
        return False


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT / shutdown: 0 on a clean stop, 1 when it could not start, could not
    save its map where asked, or its device failed."""
    return node_shell.main(NODE_NAME, LocalizeNode, args)


def run() -> None:
    """Console entry point ``localize_node``."""
    node_shell.exit_process(main())


if __name__ == "__main__":
    run()
