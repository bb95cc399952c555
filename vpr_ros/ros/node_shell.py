"""What every node of the package does around its own work, so each node behaves the same way:
parameters declared from their :class:`~vpr_ros.ros.params.Spec` (types, ranges, choices, docs),
the camera QoS, the ``/diagnostics`` status, the model runtime (:class:`Describer`: warm-up before
ready, the GPU fast-path fallback, a failed device) and the process (start, spin, one fatal line when
the configuration is unusable, close, exit at once)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from vpr_ros.errors import VprError
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.fast_path import DeviceFailure, FastPathGuard
from vpr_ros.ros.node_stats import ERROR, WARN, Health, NodeStats
from vpr_ros.ros.params import Spec
from vpr_ros.ros.startup import StartupError

T = TypeVar("T")
RCLError = rclpy_implementation.RCLError


def declare_parameters(node: Node, specs: Mapping[str, Spec]) -> dict[str, Any]:
    """Declare each parameter with its type, range, choices and description; their values, a value not
    among its choices refused (rclpy only shows the choices)."""
    for name, spec in specs.items():
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.range and isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                            to_value=float(spec.range[1]))]
        elif spec.range:
            desc.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))]
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(spec.choices)
        # an empty list has no element type for rclpy: declare it as a string array without a value
        default = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
        declare(node, name, default, desc, spec)
    values = {name: node.get_parameter_or(name).value for name in specs}
    for name, spec in specs.items():
        if spec.choices and values[name] not in spec.choices:
            raise StartupError(f"{name} must be one of {', '.join(spec.choices)}, got {values[name]!r}")
    return values


def declare(node: Node, name: str, default: Any, desc: ParameterDescriptor, spec: Spec) -> Any:
    """``node.declare_parameter``, with a value of the wrong type or out of range (a params file, ``-p``)
    refused as a :class:`StartupError` that names the parameter and what it accepts."""
    try:
        return node.declare_parameter(name, default, desc).value
    except (ParameterException, TypeError, ValueError) as exc:
        raise StartupError(f"parameter '{name}': {accepted(spec)}; {escaped(str(exc))}") from exc


def accepted(spec: Spec) -> str:
    """What a parameter accepts, in words, for error messages."""
    value = spec.default
    kind = {bool: "true or false", int: "an integer", float: "a number written with a decimal point (1.0, not 1)",
            str: "a string"}.get(type(value))
    if kind is None:  # a list
        kind = ("a list of strings" if not value else "a list of integers" if isinstance(value[0], int)
                else "a list of numbers with decimal points (1.0, not 1)")
    if spec.range:
        kind += f" in [{spec.range[0]:g}, {spec.range[1]:g}]"
    if spec.choices:
        kind += " (one of " + ", ".join(spec.choices) + ")"
    return f"expects {kind}"


def escaped(text: str) -> str:
    """``text`` safe to log: undecodable bytes and lone surrogates as escapes rather than a crash."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def camera_qos(reliable: bool) -> QoSProfile:
    """Camera-data subscriptions: sensor data (best effort, keep the last 5) by default, so a slow
    link drops frames instead of delaying them; reliable (keep 1) on request."""
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE) if reliable else qos_profile_sensor_data


def publish_diagnostics(node: Node, describer: Describer, stats: NodeStats,
                        summary: Callable[[], tuple[str, Mapping[str, Any]]]) -> None:
    """Every second, one ``<node>: pipeline`` status on ``/diagnostics``: the stats' health with the model's
    state on top, ``summary()``'s message (then the health's own), the stats' values, ``summary()``'s
    values and the model's as key/value pairs."""
    pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish() -> None:
        message, values = summary()
        values = {**stats.values(), **values, **describer.values()}
        health = describer.health(stats.status())
        text = message + (f"; {health.message}" if health.message else "")
        status = DiagnosticStatus(level=bytes([health.level]), name=f"{node.get_fully_qualified_name()}: pipeline",
                                  message=text, hardware_id=str(describer.extractor.device),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)

    node.create_timer(1.0, publish)


class ClosableNode(Protocol):
    def close(self) -> bool: ...
    def destroy_node(self) -> None: ...


def main(name: str, factory: Callable[[], ClosableNode], args: list[str] | None = None) -> int:
    """Build the node with ``factory`` and spin it until SIGINT / shutdown: 0 on a clean stop, 1 when
    it could not start (one fatal line under ``name``) or its ``close`` reports a failure."""
    try:
        rclpy.init(args=args)
    except RCLError as exc:  # e.g. a params file rcl cannot parse (YAML aliases, bad syntax)
        rclpy.logging.get_logger(name).fatal(escaped(f"cannot start: {str(exc).splitlines()[0]}"))
        return 1
    node: ClosableNode | None = None
    ok = True
    try:
        node = factory()
        rclpy.spin(node)
    except (StartupError, VprError, FileNotFoundError, ValueError, OSError) as exc:
        if node is not None:  # not bad configuration: a bug in a callback; keep its traceback
            raise
        rclpy.logging.get_logger(name).fatal(escaped(f"cannot start: {exc}"))
        ok = False
    except (KeyboardInterrupt, ExternalShutdownException):  # also while still starting
        pass
    finally:
        if threading.current_thread() is threading.main_thread():  # a second SIGINT (launch forwards one
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # to the whole group) must not cut the close short
        if node is not None:
            ok = node.close() and ok
            node.destroy_node()
        rclpy.try_shutdown()
    return 0 if ok else 1


class Describer:
    """A node's model at run time. The worker thread calls :meth:`warm_up` before its first frame
    ("warming up" in ``/diagnostics``): frames of ``frame_size`` in each batch size the cameras can form go
    through the model once, so on a GPU compilation and CUDA-graph capture precede the first real frame.
    Each step runs through :class:`~vpr_ros.fast_path.FastPathGuard`: a fast path that cannot be built
    falls back to the standard one (one ERROR, WARN in ``/diagnostics``); a failed device ends the node
    (FATAL, then its usual close, e.g. the slam map's save, and a non-zero exit)."""

    def __init__(self, node: Node, extractor: DescriptorExtractor, frame_size: Sequence[int], cameras: int = 1) -> None:
        self.node, self.extractor = node, extractor
        self.frame_size = tuple(int(v) for v in frame_size)
        self.cameras = cameras
        self.guard = FastPathGuard(extractor, self._fell_back)
        self.warmup_seconds: float | None = None
        self.failure: str | None = None

    def warm_up(self) -> bool:
        """Prepare the model; False when the device failed (the node is then shutting down)."""
        start = time.monotonic()
        try:
            self.guard.run(self._warm)
        except DeviceFailure as exc:
            self._fail(exc)
            return False
        self.warmup_seconds = time.monotonic() - start
        size = "x".join(map(str, self.frame_size)) if any(self.frame_size) else "no frame size"
        self.node.get_logger().info(f"ready: warm-up took {self.warmup_seconds:.2f} s ({self.extractor.backend}, "
                                    f"{size}, batches 1-{self.cameras})")
        return True

    def _warm(self) -> None:
        self.extractor.warmup(1)
        if all(v > 0 for v in self.frame_size):
            frame = np.zeros((*self.frame_size, 3), np.uint8)
            for batch in range(1, self.cameras + 1):
                self.extractor.extract([frame] * batch)

    def run(self, step: Callable[[], T]) -> T:
        """One describing step under the guard; a failed device shuts the node down and re-raises."""
        try:
            return self.guard.run(step)
        except DeviceFailure as exc:
            self._fail(exc)
            raise

    def _fell_back(self, cause: str) -> None:
        self.node.get_logger().error(escaped(f"the GPU fast path failed ({cause}); going on in standard mode on "
                                             f"{self.extractor.device}, slower per frame"))

    def _fail(self, exc: DeviceFailure) -> None:
        self.failure = str(exc)
        self.node.get_logger().fatal(escaped(f"{exc}; stopping: a node on a failed device would only drop frames"))
        self.node.context.try_shutdown()

    def health(self, health: Health) -> Health:
        """The node's health with the model's state on top: warming up, fallen back, failed."""
        if self.failure:
            return Health(ERROR, f"device failed: {self.failure}")
        if self.warmup_seconds is None:
            return Health(health.level, "warming up" + (f"; {health.message}" if health.message else ""))
        if self.guard.fallback:
            note = f"GPU fast path failed ({self.guard.fallback}), running standard"
            return Health(max(health.level, WARN), note + (f"; {health.message}" if health.message else ""))
        return health

    def values(self) -> dict[str, str]:
        return {"model path": self.extractor.backend,
                "warm-up s": "running" if self.warmup_seconds is None else f"{self.warmup_seconds:.2f}"}


def exit_process(code: int) -> NoReturn:
    """End the process at once once the node is closed: the interpreter's own teardown of torch and
    the DDS libraries takes seconds, and ``ros2 launch`` escalates SIGINT to SIGTERM after 5 s."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
