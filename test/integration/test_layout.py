"""The package layout, checked by reading the imports of every module (lazy ones included).

- ``rclpy`` and the ROS message packages are imported only under ``vpr_ros/ros/``;
- the library (everything but ``ros/``, ``cli/``, ``synth/`` and ``training/``) imports none of
  those edges, so it stays usable without ROS and free of demo code;
- the module import graph has no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROS_PACKAGES = {"rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs",
                "visualization_msgs", "diagnostic_msgs", "std_srvs", "builtin_interfaces", "launch", "launch_ros",
                "rtabmap_msgs"}
EDGES = ("vpr_ros.ros", "vpr_ros.cli", "vpr_ros.synth", "vpr_ros.training")


def _modules() -> dict[str, Path]:
    """Module name -> file, with training/ under its installed name vpr_ros.training."""
    found = {}
    for root, prefix in ((REPO / "vpr_ros", "vpr_ros"), (REPO / "training", "vpr_ros.training")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Absolute names imported by a module at run time; ``from pkg import sub`` counts as importing ``pkg.sub``.
    Imports under ``if TYPE_CHECKING:`` are for annotations only and never run, so they are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_modules_are_found() -> None:
    graph = _graph()
    assert {"vpr_ros.ros.node", "vpr_ros.maps.place_map", "vpr_ros.training.module", "vpr_ros.cli"} <= graph.keys()


def test_ros_is_imported_only_under_vpr_ros_ros() -> None:
    offenders = sorted(f"{mod} imports {imp}" for mod, imports in _graph().items() for imp in imports
                       if _top(imp) in ROS_PACKAGES and not mod.startswith("vpr_ros.ros"))
    assert not offenders, offenders


def test_library_imports_no_edge_code() -> None:
    offenders = sorted(f"{mod} imports {imp}" for mod, imports in _graph().items()
                       if not mod.startswith(EDGES) for imp in imports if imp.startswith(EDGES))
    assert not offenders, offenders


def test_import_graph_has_no_cycles() -> None:
    graph = _graph()
    internal = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(internal[mod]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(internal):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_a_lazy_import(tmp_path: Path) -> None:
    """The reader finds imports inside functions and relative imports (so the checks above can fail)."""
    (tmp_path / "m.py").write_text("def f():\n    import rclpy\n    from .sub import x\n")
    found = _imports("vpr_ros.maps.m", tmp_path / "m.py", {"vpr_ros.maps.sub"})
    assert {"rclpy", "vpr_ros.maps.sub"} <= found
    (tmp_path / "t.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rclpy\n"
                                   "    from .sub import x\nimport numpy\n")
    assert _imports("vpr_ros.maps.t", tmp_path / "t.py", {"vpr_ros.maps.sub"}) == {"typing", "numpy"}
