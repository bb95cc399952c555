"""Launch arguments of ``localize.launch.py`` and ``rtabmap_descriptors.launch.py`` turned into node
parameters, in plain Python, testable without ROS.

``launch`` hands a launch file nothing but strings, and silently ignores an argument nobody declared
(``treshold:=0.4``); a string given for a double parameter makes the node refuse it. So everything that
decides what the node gets is here: which arguments are set (the empty default means "unset": the params
file or the node default applies), their types, the defaults of a bare ``ros2 launch`` (the bundled demo
model and a slam map under ``$ROS_HOME``) and the check that rejects unknown arguments. Only the standard
library, PyYAML and :mod:`vpr_ros.ros.params` (no numpy): the launch process may lack numpy, torch or FAISS.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vpr_ros.errors import InputError
from vpr_ros.ros.params import PARAMS

NODE_NAME = "vpr_localize"
# Installed as package data with vpr_ros; examples and the demo only.
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "synth" / "data" / "models" / "demo_salad.pt"

# Launch arguments that set the node parameter of the same name; their default "" leaves it unset.
PARAMETER_ARGUMENTS: dict[str, str] = {
    "checkpoint": "checkpoint file (SALAD, A²GC, MegaLoc, BoQ or .onnx); unset: the params file's, else the "
                  "bundled demo model",
    "model_config": "JSON with model options; unset: the params file's, else the .json next to the checkpoint",
    "image_size": "model input 'H,W' or '[H, W]'; unset: the params file's, else the map's or the model's",
    "map": "place map folder; unset: the params file's, else $ROS_HOME/vpr_ros/<checkpoint name>.map",
    "mode": "localize or slam; unset: slam when no map is set either, else the params file's",
    "threshold": "loop-closure cosine threshold; unset: the params file's, else the map's calibrated one or 0.6",
    "top_k": "candidates retrieved per query (1-100); unset: the params file's, else 5",
    "image_topic": "raw camera topic, its /compressed sibling too; unset: the params file's, else 'image'",
}
# rtabmap_descriptors.launch.py: arguments that set the parameter of the same name (unset: the node's default).
DESCRIPTOR_ARGUMENTS: dict[str, str] = {
    "checkpoint": "checkpoint file (SALAD, A²GC, MegaLoc, BoQ or .onnx); required",
    "model_config": "JSON with model options; unset: the .json next to the checkpoint",
    "image_size": "model input 'H,W' or '[H, W]'; unset: the model's",
    "device": "auto, cpu or cuda; unset: auto (the CUDA GPU when present)",
    "precision": "fp32, bf16 or fp16; unset: fp32",
    "reliable": "true: subscribe to rgbd_image with reliable QoS; unset: false (sensor data, best effort)",
}
MODES = PARAMS["mode"].choices
TOP_K_RANGE = PARAMS["top_k"].range
# Launch configurations set by ros2 launch (--launch-prefix), read by launch (emulate_tty) or kept
# by launch_ros actions (PushRosNamespace, SetRemap, SetParameter): not misspelt arguments.
LAUNCH_INTERNAL = frozenset({"launch-prefix", "launch-prefix-filter", "emulate_tty", "ros_namespace", "ros_remaps",
                             "global_params"})
_SIZE = re.compile(r"\[?\s*(\d+)\s*(?:,|\s|x)\s*(\d+)\s*\]?")


def check_known(configurations: Iterable[str], declared: Iterable[str],
                launch_file: str = "localize.launch.py") -> None:
    """Raise :class:`InputError` naming every launch configuration this launch file does not declare,
    with the closest declared name: launch would otherwise ignore a typo and start with the default."""
    declared = set(declared)
    unknown = sorted(set(configurations) - declared - LAUNCH_INTERNAL)
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, declared, n=1)
        named.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise InputError(f"unknown launch argument{'s' if len(unknown) > 1 else ''} {', '.join(named)}; "
                     f"{launch_file} takes: {', '.join(sorted(declared))}")


def parse_parameters(arguments: Mapping[str, str], names: Iterable[str] = PARAMETER_ARGUMENTS) -> dict[str, Any]:
    """The parameter arguments ``names`` that are set, typed as the node declares them (a double parameter
    refuses an integer, ``image_size`` is an integer array); unset (empty) ones are left out. The node itself
    checks the values of ``device`` and ``precision`` (and a bad one fails the launch)."""
    return {name: _typed(name, text) for name in names if (text := arguments.get(name, "").strip())}


def _typed(name: str, text: str) -> Any:
    if name == "reliable":
        if text.lower() not in ("true", "false"):
            raise InputError(f"reliable must be true or false, got {text!r}")
        return text.lower() == "true"
    if name == "threshold":
        try:
            return float(text)
        except ValueError:
            raise InputError(f"threshold must be a number, got {text!r}") from None
    if name == "top_k":
        if not re.fullmatch(r"[+]?\d+", text) or not TOP_K_RANGE[0] <= int(text) <= TOP_K_RANGE[1]:
            raise InputError(f"top_k must be an integer from {TOP_K_RANGE[0]} to {TOP_K_RANGE[1]}, got {text!r}")
        return int(text)
    if name == "image_size":
        size = _SIZE.fullmatch(text)
        if size is None:
            raise InputError(f"image_size must be two integers, 'H,W' or '[H, W]', got {text!r}")
        return [int(size[1]), int(size[2])]
    if name == "mode" and text not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {text!r}")
    if name in ("checkpoint", "model_config", "map"):
        return os.path.expanduser(text)  # `name:=~/x` reaches launch unexpanded
    return text


def node_parameters(arguments: Mapping[str, str], file_values: Mapping[str, Any],
                    ros_home: Path) -> tuple[dict[str, Any], list[str]]:
    """Parameters to pass after the params file (so they win), and a note per default chosen here.

    The set arguments, plus what a bare launch needs and neither they nor the params file
    (``file_values``) give: the demo checkpoint, and a map under ``ros_home`` in slam mode (unless
    ``mode`` is set: ``mode:=localize`` then uses the map an earlier bare launch built)."""
    params = parse_parameters(arguments)
    effective = {**file_values, **params}
    notes = []
    if not effective.get("checkpoint"):
        params["checkpoint"] = effective["checkpoint"] = str(DEMO_CHECKPOINT)
        notes.append(f"no checkpoint set: the bundled demo model {DEMO_CHECKPOINT} (for examples only)")
    if not effective.get("map"):
        params["map"] = str(default_map(ros_home, str(effective["checkpoint"])))
        notes.append(f"no map set: {params['map']}")
        if "mode" not in params:
            params["mode"] = "slam"
            notes.append("no mode and no map set: slam (the map is created, or extended, and saved at shutdown)")
    return params, notes


def default_map(ros_home: Path, checkpoint: str) -> Path:
    """One map per checkpoint name, so that trying another model does not meet a map it cannot use."""
    return ros_home / "vpr_ros" / f"{Path(checkpoint).stem or 'slam'}.map"


def ros_home(environ: Mapping[str, str]) -> Path:
    """``$ROS_HOME``, else ``~/.ros``: where ROS 2 keeps its own per-user files (logs)."""
    home = environ.get("ROS_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".ros")
    return Path(os.path.expanduser(home))


def optional_file(name: str, text: str) -> str | None:
    """The file named by the argument ``name``, or None for ``none`` (or empty, from a parent launch
    file): ``ros2 launch`` refuses an empty ``name:=`` on its command line."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
        raise InputError(f"{name} {path} does not exist ({name}:=none for none)")
    return path


def node_fqn(namespace: str) -> str:
    """Fully qualified name of the node under ``namespace`` (with or without its leading slash)."""
    namespace = namespace.strip("/")
    return f"/{namespace}/{NODE_NAME}" if namespace else f"/{NODE_NAME}"


def read_params_file(path: str, node: str) -> dict[str, Any]:
    """The ``ros__parameters`` of the params file at ``path`` that apply to the node ``node``."""
    import yaml  # launch_ros depends on it; only needed when a params file is given

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"params_file {path} cannot be read: {exc}") from None
    return file_parameters(data, node)


def file_parameters(data: Any, node: str) -> dict[str, Any]:
    """Parameters of ``node`` in a parsed params file: every ``ros__parameters`` block whose key
    path (``/**``, ``vpr_localize``, ``ns: {vpr_localize: ...}``, wildcards ``*``, ``**``) matches
    the node's fully qualified name; later blocks override earlier ones."""
    values: dict[str, Any] = {}

    def walk(entry: Any, path: list[str]) -> None:
        if not isinstance(entry, Mapping):
            return
        for key, value in entry.items():
            if key == "ros__parameters":
                if isinstance(value, Mapping) and _matches("/".join(path).split("/"), node.split("/")):
                    values.update(value)
            else:
                walk(value, [*path, str(key)])

    walk(data, [])
    return values


def _matches(pattern: list[str], name: list[str]) -> bool:
    pattern, name = [p for p in pattern if p], [n for n in name if n]
    if not pattern:
        return not name
    if pattern[0] == "**":
        return any(_matches(pattern[1:], name[i:]) for i in range(len(name) + 1))
    return bool(name) and pattern[0] in ("*", name[0]) and _matches(pattern[1:], name[1:])


def end_launch_with_node(event: Any, _context: Any) -> list:
    """``on_exit`` of a launch file's only node: the launch has nothing left to do without it. launch
    (Humble to Kilted) has no way to set the exit code of ``ros2 launch`` (``Shutdown`` exits 0):
    ``LaunchService.run`` returns 1 only after an exception while it handles an event, so a failed
    node raises one here."""
    if event.returncode != 0:
        raise RuntimeError(f"{event.process_name} exited with code {event.returncode} (its log is above)")
    from launch.actions import Shutdown  # only ever called inside a launch process

    return [Shutdown(reason=f"{event.process_name} exited")]
