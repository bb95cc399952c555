"""What every node of the package does around its own work, so each node behaves the same way:
parameters declared from their :class:`~vpr_ros.ros.params.Spec` (types, ranges, choices, docs),
the camera QoS, the ``/diagnostics`` status, and the process (start, spin, one fatal line when the
configuration is unusable, close, exit at once)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from vpr_ros.errors import VprError
from vpr_ros.health import Health
from vpr_ros.ros.params import Spec
from vpr_ros.ros.startup import StartupError


def declare_parameters(node: Node, specs: Mapping[str, Spec]) -> dict[str, Any]:
    """Declare each parameter with its type, range, choices and description; their values."""
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
        node.declare_parameter(name, default, desc)
    return {name: node.get_parameter_or(name).value for name in specs}


def camera_qos(reliable: bool) -> QoSProfile:
    """Camera-data subscriptions: sensor data (best effort, keep the last 5) by default, so a slow
    link drops frames instead of delaying them; reliable (keep 1) on request."""
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE) if reliable else qos_profile_sensor_data


def diagnostics(node: Node, health: Health, message: str, hardware_id: str,
                values: Mapping[str, Any]) -> DiagnosticArray:
    """One ``<node>: pipeline`` status with the health's level, ``message`` (then the health's own
    message) and ``values`` as key/value pairs."""
    text = message + (f"; {health.message}" if health.message else "")
    status = DiagnosticStatus(level=bytes([health.level]), name=f"{node.get_fully_qualified_name()}: pipeline",
                              message=text, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


class ClosableNode(Protocol):
    def close(self) -> bool: ...
    def destroy_node(self) -> None: ...


def main(name: str, factory: Callable[[], ClosableNode], args: list[str] | None = None) -> int:
    """Build the node with ``factory`` and spin it until SIGINT / shutdown: 0 on a clean stop, 1 when
    it could not start (one fatal line under ``name``) or its ``close`` reports a failure."""
    rclpy.init(args=args)
    node: ClosableNode | None = None
    ok = True
    try:
        node = factory()
        rclpy.spin(node)
    except (StartupError, VprError, FileNotFoundError, ValueError, OSError) as exc:
        if node is not None:  # not bad configuration: a bug in a callback; keep its traceback
            raise
        rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
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


def exit_process(code: int) -> NoReturn:
    """End the process at once once the node is closed: the interpreter's own teardown of torch and
    the DDS libraries takes seconds, and ``ros2 launch`` escalates SIGINT to SIGTERM after 5 s."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
