"""A drive through the bundled real photographs: two traversals with ground truth, written as bags.

The world is a street (a polyline of straights and gentle bends) with a *landmark* every
``spacing_m`` metres; each landmark is one real photograph, standing a few metres beside the
road. The camera sees the landmark nearest to it, rendered by :func:`vpr_ros.synth.views.warp_view`
from where it stands: the window slides, zooms and turns in perspective as the camera passes, so
consecutive frames are nearby viewpoints of the same place, as in a real drive.

- **Traversal 1** (the map): the whole street, from standstill to standstill.
- **Traversal 2** (the query, another day): part of the street again, ``lateral_offset_m`` to the
  side with the camera rolled and pitched a little, under other light
  (:func:`vpr_ros.synth.views.photometric`), and photos that have a real second shot (``graf3`` for
  ``graf1``...) show that one; then it turns off onto a street never mapped, past landmarks
  that are not in the map: frames that must not produce loop closures.

Ground truth is geometric: a frame sees a mapped landmark exactly when it is within
``radius_m`` of the mapped street, which is also the radius used to score loop closures, so
"should close a loop" and "sees a mapped place" agree. Everything is deterministic for a seed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from vpr_ros.synth.paths import Path2D, offset_path, turtle, yaw_quaternion

SCENES = Path(__file__).resolve().parent / "data" / "scenes"
# Photos with a real second shot of the same scene (viewpoint, stereo, time): the second one is
# not a landmark of its own, it is what traversal 2 sees at the first one's place.
PARTNERS = {"graf1": "graf3", "basketball1": "basketball2", "aloeL": "aloeR",
            "Blender_Suzanne1": "Blender_Suzanne2"}
EPOCH_NS = 1_700_000_000 * 10**9  # traversal 1 starts here; traversal 2 a day later
DAY_NS = 86_400 * 10**9
SETBACK_M = 4.0  # landmarks stand this far beside the road


def landmark_photos() -> list[str]:
    """Names of the photos that can be landmarks: every scene once (second shots excluded)."""
    names = sorted(p.stem for p in SCENES.glob("*.jpg"))
    return [n for n in names if n not in PARTNERS.values()]


@dataclass(frozen=True)
class RouteSpec:
    """Layout, motion and rendering of a demo route."""

    map_places: int = 13  # landmarks along the mapped street
    revisit: tuple[int, int] = (2, 10)  # landmarks [first, last) that traversal 2 drives past again
    novel_places: int = 4  # landmarks on the unmapped street
    spacing_m: float = 10.0
    speed_mps: float = 1.5  # cruise speed (walking pace); +-8 % slow variation
    accel_mps2: float = 0.5  # start and stop
    image_hz: float = 10.0
    pose_hz: float = 50.0
    lateral_offset_m: float = 1.5  # traversal 2 drives this far left of traversal 1
    radius_m: float = 10.0  # ground truth: a match is correct within this distance
    image_size: tuple[int, int] = (240, 320)  # (H, W)
    light_strength: float = 1.0  # of traversal 2's light change
    seed: int = 0

    def __post_init__(self) -> None:
        first, last = self.revisit
        if not 0 <= first < last <= self.map_places:
            raise ValueError(f"revisit must be a range inside 0..{self.map_places}, got {self.revisit}")
        if self.map_places + self.novel_places > len(landmark_photos()):
            raise ValueError(f"{self.map_places} + {self.novel_places} landmarks, but only "
                             f"{len(landmark_photos())} distinct photos")
        ratio = self.pose_hz / self.image_hz
        if abs(ratio - round(ratio)) > 1e-9 or ratio < 1:
            raise ValueError("pose_hz must be a whole multiple of image_hz (frames lie on pose samples)")
        if self.radius_m <= self.lateral_offset_m or self.radius_m < self.spacing_m / 2:
            raise ValueError("radius_m must exceed lateral_offset_m and half the spacing")


FULL = RouteSpec()
SHORT = RouteSpec(map_places=5, revisit=(1, 4), novel_places=2)


# -- the streets ------------------------------------------------------------------------------------


def mapped_street(spec: RouteSpec) -> Path2D:
    """The street of traversal 1: gentle S-bends, long enough for ``map_places`` landmarks."""
    length = spec.map_places * spec.spacing_m
    bend = math.radians(25) / 30.0  # 25 degrees over 30 m
    moves, done, k = [], 0.0, 0
    pattern = [(20.0, 0.0), (30.0, bend), (25.0, 0.0), (30.0, -bend)]
    while done < length:
        seg, rate = pattern[k % len(pattern)]
        seg = min(seg, length - done)
        moves.append((seg, rate))
        done, k = done + seg, k + 1
    return turtle((0.0, 0.0), 0.0, moves)


def query_path(spec: RouteSpec, street: Path2D) -> tuple[Path2D, float]:
    """Traversal 2: along the revisited stretch, then a left turn onto an unmapped street that bends
    back to run parallel ~45 m away (well outside ``radius_m``). Also returns where the turn starts."""
    first, last = spec.revisit
    along = offset_path(street, first * spec.spacing_m, last * spec.spacing_m, spec.lateral_offset_m)
    end, h = along.points[-1], float(along.heading(along.length))
    tail = spec.radius_m + spec.novel_places * spec.spacing_m + 5.0
    exit_ = turtle(end, h, [(8.0 * math.pi / 2, 1 / 8.0), (15.0, 0.0), (20.0 * math.pi / 2, -1 / 20.0), (tail, 0.0)])
    return Path2D(np.concatenate([along.points, exit_.points[1:]])), along.length


# -- motion ------------------------------------------------------------------------------------------


def drive(length: float, spec: RouteSpec, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """(times s, arc lengths m) at ``pose_hz``: accelerate, cruise with a slow +-8 % speed
    variation, brake to stop at ``length``."""
    dt = 1.0 / spec.pose_hz
    t, s, v = [0.0], [0.0], 0.0
    while s[-1] < length - 1e-6:
        cruise = spec.speed_mps * (1 + 0.08 * math.sin(2 * math.pi * t[-1] / 17.0 + phase))
        a_dt = spec.accel_mps2 * dt
        brake = -a_dt + math.sqrt(a_dt**2 + 2 * spec.accel_mps2 * max(length - s[-1], 0.0))  # stops at the end
        v = max(min(cruise, brake, v + a_dt), 0.01)  # the floor only ends the last centimetre
        t.append(t[-1] + dt)
        s.append(min(s[-1] + v * dt, length))
    return np.asarray(t), np.asarray(s)


# -- what the camera sees ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """How a traversal's camera is mounted and lit (traversal 2 differs from traversal 1)."""

    roll_deg: float = 0.0
    pitch: float = 0.0  # vertical shift of the aim point, fraction of the photo
    light: float = 0.0  # photometric strength
    partners: bool = False  # photos with a real second shot show that shot


@dataclass(frozen=True)
class View:
    """What one frame shows: a landmark seen from ``along``/``lateral`` metres off its front."""

    landmark: int  # index into Route.landmarks
    along: float  # m, + past the landmark
    lateral: float  # m, + to the left of the mapped road
    segment: str  # "map", "revisit", "exit" (leaving, still near the map) or "novel"


def warp_params(view: View, camera: Camera, t: float, spec: RouteSpec) -> dict:
    """Window of the photo the camera sees: it pans as the camera passes (along), zooms out with
    distance, turns in perspective with the viewing angle, and shakes a little (t)."""
    distance = math.hypot(view.along, SETBACK_M + view.lateral)
    u = view.along / (spec.spacing_m / 2)
    shake = 0.8 * math.sin(2 * math.pi * t / 1.3) + 0.4 * math.sin(2 * math.pi * t / 0.7)
    return {
        "center": (0.5 + 0.15 * u, 0.5 + camera.pitch + 0.01 * view.lateral),
        "scale": float(np.clip(0.5 * distance / SETBACK_M, 0.45, 1.0)),
        "rotation_deg": camera.roll_deg + 2.0 * u + shake,
        "tilt": (float(np.clip(0.3 * view.along / distance, -0.3, 0.3)),
                 float(np.clip(0.02 * view.lateral, -0.2, 0.2))),
    }


# -- the route ---------------------------------------------------------------------------------------


@dataclass
class Traversal:
    """Ground truth of one traversal: poses at ``pose_hz``, and which pose samples are frames."""

    name: str
    camera: Camera
    stamps_ns: np.ndarray  # [P] int64
    positions: np.ndarray  # [P, 3]
    orientations: np.ndarray  # [P, 4] x, y, z, w
    frame_samples: np.ndarray  # [F] indices into the pose arrays
    frame_arc: np.ndarray  # [F] metres driven at each frame
    views: list[View] = field(default_factory=list)  # [F]

    @property
    def frame_stamps_ns(self) -> np.ndarray:
        return self.stamps_ns[self.frame_samples]

    @property
    def frame_positions(self) -> np.ndarray:
        return self.positions[self.frame_samples]

    @property
    def segments(self) -> np.ndarray:
        return np.array([v.segment for v in self.views])

    def poses(self) -> Iterator[tuple[int, tuple[float, ...], tuple[float, ...]]]:
        """(stamp ns, position, orientation) for :func:`vpr_ros.bags.writer.write_bag`."""
        for st, p, q in zip(self.stamps_ns, self.positions, self.orientations, strict=True):
            yield int(st), tuple(map(float, p)), tuple(map(float, q))


@dataclass
class Route:
    spec: RouteSpec
    landmarks: list[str]  # photo names; the first spec.map_places are on the mapped street
    landmark_positions: np.ndarray  # [L, 2]
    street: Path2D
    traversals: dict[str, Traversal]

    @property
    def map_run(self) -> Traversal:
        return self.traversals["map"]

    @property
    def query_run(self) -> Traversal:
        return self.traversals["query"]

    def frames(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """(stamp ns, RGB) of every frame of a traversal, rendered lazily (a bag's worth of
        frames would not fit in memory comfortably at full size)."""
        run = self.traversals[name]
        photos = _photos()
        for stamp, view in zip(run.frame_stamps_ns, run.views, strict=True):
            yield int(stamp), self.render(view, run.camera, int(stamp), photos)

    def render(self, view: View, camera: Camera, stamp_ns: int, photos: dict[str, np.ndarray] | None = None,
               ) -> np.ndarray:
        from vpr_ros.synth.views import photometric, warp_view

        photos = photos or _photos()
        name = self.landmarks[view.landmark]
        if camera.partners:
            name = PARTNERS.get(name, name)
        params = warp_params(view, camera, (stamp_ns % DAY_NS) * 1e-9, self.spec)
        rgb = warp_view(photos[name], out_size=self.spec.image_size, **params)
        if camera.light > 0:  # one light per landmark and day: steady along the drive, not flicker
            rgb = photometric(rgb, np.random.default_rng([self.spec.seed, 2, view.landmark]), camera.light)
        return rgb


@cache
def _photos() -> dict[str, np.ndarray]:
    from vpr_ros.preprocess import load_image

    return {p.stem: np.asarray(load_image(p)) for p in sorted(SCENES.glob("*.jpg"))}


def make_route(spec: RouteSpec = FULL) -> Route:
    """Lay out the landmarks, drive both traversals and label every frame (no rendering yet)."""
    rng = np.random.default_rng(spec.seed)
    photos = landmark_photos()
    order = [photos[i] for i in rng.permutation(len(photos))][: spec.map_places + spec.novel_places]
    street = mapped_street(spec)
    mapped_s = (np.arange(spec.map_places) + 0.5) * spec.spacing_m
    qpath, turn = query_path(spec, street)
    runs = {
        "map": _traverse("map", street, spec, Camera(), EPOCH_NS, phase=0.0),
        "query": _traverse("query", qpath, spec, Camera(roll_deg=3.0, pitch=-0.05, light=spec.light_strength,
                                                         partners=True), EPOCH_NS + DAY_NS, phase=1.0),
    }
    novel_start = _label_views(runs, street, turn, spec)
    novel_s = novel_start + (np.arange(spec.novel_places) + 0.5) * spec.spacing_m
    positions = np.concatenate([street.at(mapped_s) + street.left(mapped_s) * SETBACK_M,
                                qpath.at(novel_s) + qpath.left(novel_s) * SETBACK_M])
    return Route(spec, order, positions, street, runs)


def _traverse(name: str, path: Path2D, spec: RouteSpec, camera: Camera, t0_ns: int, phase: float) -> Traversal:
    t, s = drive(path.length, spec, phase)
    xy = path.at(s)
    positions = np.concatenate([xy, np.zeros((len(s), 1))], axis=1)
    stamps = t0_ns + np.rint(t * 1e9).astype(np.int64)
    step = round(spec.pose_hz / spec.image_hz)
    frames = np.arange(0, len(t), step)
    return Traversal(name, camera, stamps, positions, yaw_quaternion(path.heading(s)), frames, s[frames])


def _label_views(runs: dict[str, Traversal], street: Path2D, turn: float, spec: RouteSpec) -> float:
    """Give each frame its landmark: the nearest mapped one within ``radius_m`` of the street,
    else the unmapped one of its stretch. Returns the query arc length where the unmapped
    street begins (first frame beyond the radius after the turn)."""
    novel_start = math.inf
    for run in runs.values():
        s_street, dist, lateral = street.project(run.frame_positions[:, :2])
        arc = run.frame_arc
        near = dist <= spec.radius_m
        if run.name == "query" and not near.all():
            novel_start = float(arc[np.argmax(~near)])
        views = []
        for k in range(len(arc)):
            if near[k]:
                i = int(np.clip(s_street[k] // spec.spacing_m, 0, spec.map_places - 1))
                along = float(s_street[k] - (i + 0.5) * spec.spacing_m)
                segment = "map" if run.name == "map" else ("revisit" if arc[k] <= turn else "exit")
                views.append(View(i, along, float(lateral[k]), segment))
            else:
                u = arc[k] - novel_start
                j = int(np.clip(u // spec.spacing_m, 0, spec.novel_places - 1))
                views.append(View(spec.map_places + j, float(u - (j + 0.5) * spec.spacing_m), 0.0, "novel"))
        run.views = views
    _trim_after_novel(runs["query"], novel_start, spec)
    return novel_start


def _trim_after_novel(run: Traversal, novel_start: float, spec: RouteSpec) -> None:
    """End traversal 2 once it has passed its last unmapped landmark."""
    arc = run.frame_arc
    keep = arc <= novel_start + spec.novel_places * spec.spacing_m
    last_sample = int(run.frame_samples[keep][-1])
    run.stamps_ns, run.positions = run.stamps_ns[: last_sample + 1], run.positions[: last_sample + 1]
    run.orientations = run.orientations[: last_sample + 1]
    run.frame_samples = run.frame_samples[keep]
    run.views = [v for v, k in zip(run.views, keep, strict=True) if k]
    run.frame_arc = arc[keep]


# -- files -------------------------------------------------------------------------------------------


BAG_NAMES = {"map": "traversal1", "query": "traversal2"}
IMAGE_TOPIC = "/camera/image_raw"
POSE_TOPIC = "/odom"


def image_topic(image_format: str) -> str:
    """Topic of the frames in the bags: compressed ones on ``.../compressed``, as image_transport does."""
    return IMAGE_TOPIC if image_format == "raw" else IMAGE_TOPIC + "/compressed"


def write_bags(route: Route, out_dir: str | os.PathLike, storage: str = "mcap", image_format: str = "jpeg",
               ) -> dict[str, Path]:
    """Both traversals as bags (frames on :func:`image_topic`, Odometry on ``POSE_TOPIC``), plus
    the ground truth as ``route.json`` and ``frames.csv``. JPEG keeps a bag ~20 kB per frame."""
    from vpr_ros.bags.writer import write_bag

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, run in route.traversals.items():
        path = out / (BAG_NAMES[name] + (".bag" if storage == "ros1" else ""))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        paths[name] = write_bag(path, route.frames(name), run.poses(), storage=storage,
                                image_topic=image_topic(image_format), pose_topic=POSE_TOPIC,
                                image_format=image_format, pose_type="odometry")
    write_ground_truth(route, out)
    return paths


def write_ground_truth(route: Route, out_dir: Path) -> None:
    """``route.json`` (spec, landmarks) and ``frames.csv`` (one row per frame of each traversal)."""
    spec = asdict(route.spec)
    landmarks = [{"index": i, "photo": name, "mapped": i < route.spec.map_places,
                  "position": [round(float(v), 3) for v in route.landmark_positions[i]]}
                 for i, name in enumerate(route.landmarks)]
    (out_dir / "route.json").write_text(json.dumps({"spec": spec, "landmarks": landmarks}, indent=1) + "\n")
    with (out_dir / "frames.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["traversal", "stamp_ns", "x", "y", "yaw_deg", "landmark", "photo", "segment"])
        for name, run in route.traversals.items():
            yaw = np.degrees(2 * np.arctan2(run.orientations[:, 2], run.orientations[:, 3]))[run.frame_samples]
            for st, p, y, v in zip(run.frame_stamps_ns, run.frame_positions, yaw, run.views, strict=True):
                w.writerow([name, int(st), f"{p[0]:.3f}", f"{p[1]:.3f}", f"{y:.2f}", v.landmark,
                            route.landmarks[v.landmark], v.segment])
