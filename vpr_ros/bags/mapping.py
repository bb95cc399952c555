"""Offline place maps from rosbags: decode, pick keyframes, describe in batches, save a PlaceMap.

A background thread decodes frames ahead (:class:`vpr_ros.bags.read_ahead.ReadAhead`) while the model
describes the previous batch, so inference stays the bottleneck. Keyframes pass the live node's gate
(:class:`vpr_ros.maps.keyframes.KeyframeSelector`): time/distance before inference, novelty after it.

The map's write lock is held from opening the map to saving it, so a second writer is refused instead
of one of the two losing its places. If a bag turns out damaged half-way, the places added so far are
saved (atomically, so the earlier map is never lost) and :class:`vpr_ros.errors.BagError` is raised
with the summary attached.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vpr_ros.bags.bag_files import check_bag, recording_start
from vpr_ros.bags.read_ahead import ReadAhead
from vpr_ros.bags.reader import Frame, ReadStats, read_frames
from vpr_ros.errors import BagError, InputError, VprError
from vpr_ros.extractor import DescriptorExtractor
from vpr_ros.maps.keyframes import KeyframeSelector
from vpr_ros.maps.place_map import PlaceMap

LOG = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    """What ``build_map`` read, kept and skipped, and how fast."""

    out: Path
    frames_read: int = 0
    bad_frames: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0  # frames stamped before an already emitted one (dropped)
    kept: int = 0
    skipped_period: int = 0
    skipped_distance: int = 0
    skipped_novelty: int = 0
    distance_unchecked: int = 0  # passed min_distance only because they had no pose
    kept_without_pose: int = 0
    pose_samples: int = 0
    pose_rejected: int = 0  # samples dropped: NaN or inf, beyond MAX_POSITION_M, NavSatFix without a fix
    map_places: int = 0
    first_id: int | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def frames_per_s(self) -> float:
        return self.frames_read / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        """Human-readable lines for the command line."""
        ids = "" if self.first_id is None else f" (ids {self.first_id}..{self.first_id + self.kept - 1})"
        lines = [
            f"frames read        {self.frames_read} in {self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s)",
            f"bad frames         {self.bad_frames}" + (f" {self.bad_reasons}" if self.bad_reasons else ""),
            f"kept keyframes     {self.kept}{ids}, {self.kept_without_pose} of them without a pose",
            f"skipped            {self.skipped_period} by min-period, {self.skipped_distance} by min-distance, "
            f"{self.skipped_novelty} by novelty",
        ]
        if self.distance_unchecked:
            lines.append(f"no pose            {self.distance_unchecked} frames had no pose, so min-distance "
                         "could not drop them")
        if self.out_of_order:
            lines.append(f"out of order       {self.out_of_order} frames stamped before earlier ones (dropped)")
        rejected = f", {self.pose_rejected} rejected as not finite, out of range or without a fix" \
            if self.pose_rejected else ""
        lines.append(f"map                {self.out}: {self.map_places} places ({self.pose_samples} pose samples "
                     f"read{rejected})")
        if self.error:
            lines.append(f"error              {self.error}")
        return "\n".join(lines)


def _frames(bags: Sequence[Path], image_topic: str, pose_topic: str | None, start: float | None,
            end: float | None, max_pose_gap: float, origin: list, stats: ReadStats) -> Iterator[Frame]:
    """Frames of every bag in turn; ``origin`` is a one-slot list shared with the ENU conversion."""
    zero = recording_start(bags) if start is not None or end is not None else None
    for bag in bags:
        yield from read_frames(bag, image_topic, pose_topic=pose_topic, start=start, end=end, time_zero_ns=zero,
                               max_pose_gap=max_pose_gap, enu_origin=origin[0], stats=stats,
                               on_origin=lambda o: origin.__setitem__(0, o))


def _message_count(bags: Sequence[Path], image_topic: str) -> int | None:
    """Image messages in the bags' indexes (the progress bar's total, so it shows an ETA); None
    when a bag cannot tell (reading it will report why)."""
    try:
        return sum(check_bag(bag, image_topic) for bag in bags)
    except VprError:
        return None


def build_map(
    bags: Sequence[str | os.PathLike],
    extractor: DescriptorExtractor,
    out: str | os.PathLike,
    *,
    image_topic: str,
    pose_topic: str | None = None,
    min_distance: float = 0.0,
    min_period: float = 0.0,
    novelty: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_pose_gap: float = 0.5,
    batch_size: int | None = None,
    index: str = "flat",
    append: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Describe the keyframes of ``bags`` and save them as a place map at ``out``; returns a summary.

    ``start``/``end`` are seconds from the first message of the earliest bag. ``append`` adds to
    an existing map built by the same model (ids continue after its last place).
    """
    if not bags:
        raise InputError("no bags given")
    batch_size = batch_size or extractor.batch_size
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    selector = KeyframeSelector(min_period, min_distance, novelty)
    out = Path(out)
    with PlaceMap.lock(out):  # held until saved: MapLockedError while another process writes this map
        pm = PlaceMap.open(out, extractor.identity, index, append)
        summary, stats = BuildSummary(out), ReadStats()
        origin = [pm.enu_origin]  # appended NavSatFix poses share the map's ENU frame
        frames = _frames([Path(b) for b in bags], image_topic, pose_topic, start, end, max_pose_gap, origin, stats)
        whole = progress and start is None and end is None  # a --start/--end window reads an unknown share
        total = _message_count([Path(b) for b in bags], image_topic) if whole else None
        t0 = time.perf_counter()
        pending: list[Frame] = []
        try:
            with ReadAhead(frames, depth=2 * batch_size) as ahead, \
                    tqdm(desc="build-map", total=total, unit="frame", disable=not progress, dynamic_ncols=True) as bar:
                for frame in ahead:
                    bar.update()
                    if selector.sample(frame.stamp_ns, None if frame.pose is None else frame.pose.position):
                        pending.append(frame)
                    if len(pending) >= batch_size:
                        _add(pm, extractor, pending, selector, summary)
                        bar.set_postfix(kept=summary.kept, refresh=False)
                _add(pm, extractor, pending, selector, summary)
                bar.set_postfix(kept=summary.kept)
        except BagError as exc:
            _add(pm, extractor, pending, selector, summary)  # frames read before the damage are good
            summary.error = str(exc)
            _finish(pm, out, summary, stats, t0, save=append or summary.kept > 0, origin=origin[0], selector=selector)
            error = BagError(f"{exc}\n{_saved_note(summary, append)}")
            error.summary = summary  # type: ignore[attr-defined]
            raise error from exc
        return _finish(pm, out, summary, stats, t0, save=True, origin=origin[0], selector=selector)


def _saved_note(summary: BuildSummary, append: bool) -> str:
    if summary.kept == 0 and not append:
        return "no map was written"
    return f"the map {summary.out} was saved with {summary.map_places} places ({summary.kept} added before the error)"


def _add(pm: PlaceMap, extractor: DescriptorExtractor, pending: list[Frame], selector: KeyframeSelector,
         summary: BuildSummary) -> None:
    """Describe the pending frames, pass them through the novelty gate, add the kept ones."""
    if not pending:
        return
    descriptors = extractor.describe([f.rgb for f in pending])
    keep = [i for i, d in enumerate(descriptors) if selector.novel(d)]
    if keep:
        kept = [pending[i] for i in keep]
        ids = pm.add(descriptors[keep], [f.stamp for f in kept], poses=[f.pose for f in kept],
                     frame_ids=[f.frame_id for f in kept], sources=[f.source for f in kept])
        summary.first_id = int(ids[0]) if summary.first_id is None else summary.first_id
        summary.kept += len(kept)
        summary.kept_without_pose += sum(f.pose is None for f in kept)
    pending.clear()


def _finish(pm: PlaceMap, out: Path, summary: BuildSummary, stats: ReadStats, t0: float, save: bool,
            origin: tuple[float, float, float] | None, selector: KeyframeSelector) -> BuildSummary:
    pm.enu_origin = origin
    summary.skipped_period = selector.skipped["period"]
    summary.skipped_distance = selector.skipped["distance"]
    summary.skipped_novelty = selector.skipped["novelty"]
    summary.distance_unchecked = selector.skipped["distance_unchecked"]
    if save:
        pm.save(out)
    summary.seconds = time.perf_counter() - t0
    summary.frames_read = stats.frames
    summary.bad_frames = stats.bad_frames
    summary.bad_reasons = dict(stats.bad)
    summary.out_of_order = stats.out_of_order
    summary.pose_samples = stats.pose_samples
    summary.pose_rejected = stats.pose_rejected
    summary.map_places = len(pm)
    return summary
