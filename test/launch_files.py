"""What a launch file relies on, read from its source (launch_ros is not installable here): the names it
imports from :mod:`vpr_ros.ros.launch_args` and the arguments it declares itself."""

from __future__ import annotations

import ast
from pathlib import Path


def launch_file_names(path: Path) -> tuple[str, set[str], set[str]]:
    """``(source, names imported from vpr_ros.ros.launch_args, DeclareLaunchArgument names)``."""
    source = path.read_text()
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "vpr_ros.ros.launch_args" for alias in node.names}
    declared = {call.args[0].value for call in ast.walk(tree)
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument"
                and isinstance(call.args[0], ast.Constant)}
    return source, imported, declared
