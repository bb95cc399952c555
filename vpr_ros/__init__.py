"""Visual place recognition for ROS 2: DINOv2 + SALAD, A²GC, MegaLoc or BoQ global descriptors and a FAISS place map.

The everyday entry points are importable from here (``from vpr_ros import load_extractor, PlaceMap``).
Each is imported on first use: every import of a submodule (a launch file's, say) runs this file
first, so it must stay quick and must not pull in torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_HOMES = {
    "load_extractor": "vpr_ros.extractor",
    "load_model": "vpr_ros.models",
    "PlaceMap": "vpr_ros.maps.place_map",
    "Pose": "vpr_ros.types",
    "PlaceRecognizer": "vpr_ros.loop_closure.recognizer",
    "build_map": "vpr_ros.bags.mapping",
    "recall_at_k": "vpr_ros.evaluation.recall",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
