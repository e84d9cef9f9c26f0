"""Faces in sampled frames: MTCNN boxes, crops made as the training crops were, and tracks.

Detection runs on downscaled copies of the frames (MTCNN's cost grows with pixels, and faces
worth classifying stay well above its 20 px minimum), in batches of equal-size frames. Boxes are
mapped back to the frames as given, and crops are cut from those frames at full resolution:
a tight square around the box (side = max(w, h), centred, no margin), zero-padded where it
leaves the frame, resized to 224x224 RGB -- the recipe of the DFDC training crops.

MTCNN itself runs through `detect_face_fast`: facenet-pytorch's three stages with its weights,
settings and decisions, but candidate boxes resampled in one vectorised step from summed-area
tables and the nets in channels-last layout.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import (
    batched_nms,
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    pad,
    rerec,
)

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

CROP_SIZE = 224


@dataclass
class Face:
    box: Box  # in pixels of the frame it was found in
    prob: float  # MTCNN's face probability
    track_id: int  # same id = same person across frames of one clip
    crop: np.ndarray  # [CROP_SIZE, CROP_SIZE, 3] uint8 RGB


class FaceDetector:
    """MTCNN with facenet-pytorch's bundled weights; build once and reuse across clips.

    `detect_long_side`: frames are shrunk so their long side is at most this before detection.
    On the three DFDC dev clips (32 frames each, one thread) 640 missed the main face in 1 of
    96 frames in 2.2-4.5 s per clip; 960 missed 3 in 4.4-7.5 s; 480 missed 3. `min_prob` and
    `min_face_px` drop weak detections and faces too small to classify (a 224 crop of them is
    mostly upscaling blur), such as a photo on the wall behind a person. `batch_size` frames go
    to MTCNN at once when they are all decoded: 8 ran as fast as 32 and lets `detect` report
    progress (frames still decoding: `detect(eager=True)`). Those timings were
    taken with facenet-pytorch's own `detect`; `detect_face_fast` finds the same boxes in about
    half the time (the 96 frames: 10.1 s -> 5.6 s, one thread, measured interleaved on a 2-core
    EPYC shared with two training jobs). MTCNN then searches faces down to `min_face_px` (at the
    detection scale; at least its own 20 px) rather than always 20 px: on the three clips the
    main face was found in 95 of 96 frames (94 before) and detection took 25% less time again
    (lynaeydofd 3.3 -> 2.4 s, brtujopkby 2.6 -> 2.1 s, yhffcuhhjy 1.3 -> 0.65 s); boxes move by
    a few pixels (median IoU 0.92 with the old ones), as MTCNN's do between pyramid scales.

    Fewer full passes: MTCNN's costly first stage (P-Net over an image pyramid) runs only on
    every `key_every`-th frame and the last. A frame between two of them whose faces pair up
    (as many faces, each within `max_shift` face sizes per frame apart) is not searched: each
    face's box is interpolated between the two, and MTCNN's second and third stage check it
    (`refine_boxes` on a few shifted and scaled boxes around it), as they check the first
    stage's candidates. Where faces appear or leave between two of them, where a face is not
    confirmed, or where its box would move more than `max_move` face sizes from where it was
    expected, the frame gets the full search. And once faces are found, the search stops at
    faces `scale_share` times the smallest of them (not `min_face_px`): a 1080p close-up needs
    none of the pyramid's finest, costliest levels. `detect(counts=...)` reports how many
    frames were searched in full and how many were followed.
    """

    def __init__(self, *, detect_long_side: int = 640, min_prob: float = 0.9,
                 min_face_px: int = 64, crop_size: int = CROP_SIZE, batch_size: int = 8,
                 max_shift: float = 0.75, key_every: int = 4, max_move: float = 0.5,
                 scale_share: float = 0.5, device: str = "cpu"):
        self.mtcnn = MTCNN(keep_all=True, device=device)
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            to_channels_last(net)
        self.detect_long_side = detect_long_side
        self.min_prob = min_prob
        self.min_face_px = min_face_px
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.max_shift = max_shift
        self.key_every = key_every
        self.max_move = max_move
        self.scale_share = scale_share

    def detect(self, frames: Iterable[np.ndarray], *,
               progress: Callable[[float], None] | None = None, total: int | None = None,
               counts: dict[str, int] | None = None, eager: bool = False) -> list[list[Face]]:
        """Faces per frame for equal-size uint8 RGB frames in time order, with track ids.

        `frames` may be a list or any iterable, e.g. frames still being decoded: each batch of
        key frames goes to MTCNN as soon as it is full. `eager`: search each key frame as soon
        as it arrives instead, for frames still being decoded: a batch of 8 key frames spans
        the whole of a 32-frame clip, so MTCNN would sit idle until the decoder is done (on
        the DFDC clips, overlapped with decoding: 1.20 -> 1.07 s and 1.61 -> 1.45 s; on frames
        already decoded, batches are quicker: 1.26 against 1.40 s). Same boxes either way.
        `total` (default: len(frames)) scales `progress`. `counts`, if given, receives
        `detected` (frames searched in full) and `tracked` (frames whose faces were
        followed)."""
        if total is None and hasattr(frames, "__len__"):
            total = len(frames)
        counts = {} if counts is None else counts
        counts.update(detected=0, tracked=0)
        seen: list[np.ndarray] = []
        found: dict[int, list[tuple[Box, float]]] = {}  # frame position -> (box, prob)
        keys_done: list[int] = []
        min_face: float | None = None  # search down to this face size (pixels); None: default
        for frame in itertools.chain(frames, [None]):
            if frame is not None:
                seen.append(frame)
            keys = [i for i in key_positions(len(seen), self.key_every, last=frame is None)
                    if i not in found]
            # until a face sets the scale, each key frame is searched as soon as it arrives
            if not keys or not (frame is None or min_face is None or eager
                                or len(keys) >= self.batch_size):
                continue
            self.search(seen, keys, found, min_face, counts)
            keys_done += keys
            if min_face is None:
                sides = [box_side(box) for i in keys for box, _ in found[i]]
                min_face = self.scale_share * min(sides) if sides else None
            for p, q in zip(keys_done, keys_done[1:]):
                self.fill_between(seen, p, q, found, min_face, counts)
            if progress:
                progress(min(1.0, len(found) / max(total or len(seen), 1)))
        boxes = [[box for box, _ in found[i]] for i in range(len(seen))]
        tracks = assign_tracks(boxes, max_shift=self.max_shift)
        return [[Face(box=box, prob=prob, track_id=track,
                      crop=square_crop(frame, box, size=self.crop_size))
                 for (box, prob), track in zip(found[i], frame_tracks)]
                for i, (frame, frame_tracks) in enumerate(zip(seen, tracks))]

    def search(self, frames: Sequence[np.ndarray], positions: Sequence[int],
               found: dict[int, list[tuple[Box, float]]], min_face: float | None,
               counts: dict[str, int]) -> None:
        """Full MTCNN on the frames at `positions`, `batch_size` at a time."""
        for start in range(0, len(positions), self.batch_size):
            chunk = positions[start:start + self.batch_size]
            boxes, probs = self.detect_boxes([frames[i] for i in chunk], min_face=min_face)
            for i, frame_boxes, frame_probs in zip(chunk, boxes, probs):
                found[i] = list(zip(frame_boxes, frame_probs))
            counts["detected"] += len(chunk)

    def fill_between(self, frames: Sequence[np.ndarray], p: int, q: int,
                     found: dict[int, list[tuple[Box, float]]], min_face: float | None,
                     counts: dict[str, int]) -> None:
        """Faces of the frames between searched frames p and q: followed where the faces at
        both ends pair up, searched in full where they do not or a face is lost."""
        inner = [j for j in range(p + 1, q) if j not in found]
        if not inner:
            return
        pairs = pair_up(found[p], found[q], max_shift=self.max_shift * (q - p))
        lost = inner
        if pairs is not None:
            expected = [[interpolate(a, b, (j - p) / (q - p)) for a, b in pairs] for j in inner]
            followed = self.follow([frames[j] for j in inner], expected) if pairs else \
                [[] for _ in inner]  # nobody at either end: nobody between
            lost = [j for j, faces in zip(inner, followed) if faces is None]
            for j, faces in zip(inner, followed):
                if faces is not None:
                    found[j] = faces
            counts["tracked"] += len(inner) - len(lost)
        if lost:
            self.search(frames, lost, found, min_face, counts)

    def follow(self, frames: Sequence[np.ndarray], expected: Sequence[Sequence[Box]]
               ) -> list[list[tuple[Box, float]] | None]:
        """Per frame, the faces MTCNN's later stages confirm near the `expected` boxes, in
        their order; None for a frame where one of them is not confirmed or moved too far."""
        scale, small = self.shrink(frames)
        candidates = [[tuple(v * scale for v in box) for face in boxes for box in around(face)]
                      for boxes in expected]
        out: list[list[tuple[Box, float]] | None] = []
        for boxes, (got, probs) in zip(expected, refine_boxes(small, candidates, self.mtcnn)):
            kept = self.keep(got, probs, scale)
            faces: list[tuple[Box, float]] | None = []
            for box in boxes:
                near = [(box_distance(box, k[0]), n) for n, k in enumerate(kept)
                        if size_ratio(box, k[0]) <= 1 + self.max_move]
                distance, n = min(near, default=(np.inf, -1))
                if distance > self.max_move:
                    faces = None
                    break
                faces.append(kept.pop(n))
            out.append(faces)
        return out

    def detect_boxes(self, frames: Sequence[np.ndarray], *, min_face: float | None = None
                     ) -> tuple[list[list[Box]], list[list[float]]]:
        """Kept boxes (in the frames' pixels) and probabilities, per frame of one batch.
        `min_face`: search no smaller faces than this (pixels of the frames), if larger than
        `min_face_px`."""
        scale, small = self.shrink(frames)
        # MTCNN searches faces down to this size (pixels of the shrunk frame): no smaller than
        # the faces kept, nor than MTCNN's own 20 px.
        min_face_size = max(self.mtcnn.min_face_size, self.min_face_px * scale)
        if min(small.shape[1:3]) < min_face_size:  # no room for a face; MTCNN would fail
            return [[] for _ in frames], [[] for _ in frames]
        # Larger faces only: leave out the pyramid's finest levels rather than start it at
        # another size, so the levels searched are exactly the ones searched before (MTCNN's
        # borderline faces come and go when its scales shift by a few percent).
        skip = 0
        if min_face and min_face * scale > min_face_size:
            skip = int(math.log(min_face * scale / min_face_size) / -math.log(self.mtcnn.factor))
        boxes, probs = [], []
        for frame_boxes, frame_probs in detect_face_fast(small, self.mtcnn,
                                                         min_face_size=min_face_size,
                                                         skip_levels=skip):
            kept = self.keep(frame_boxes, frame_probs, scale)
            boxes.append([box for box, _ in kept])
            probs.append([prob for _, prob in kept])
        return boxes, probs

    def shrink(self, frames: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        """(scale, the frames shrunk to `detect_long_side` as one batch)."""
        height, width = frames[0].shape[:2]
        scale = min(1.0, self.detect_long_side / max(height, width))
        size = (round(width * scale), round(height * scale))
        return scale, np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA)
                                if scale < 1 else f for f in frames])

    def keep(self, boxes: np.ndarray, probs: np.ndarray, scale: float
             ) -> list[tuple[Box, float]]:
        """MTCNN's boxes at the detection scale -> (box in the frame's pixels, prob), without
        weak detections and faces too small to classify."""
        kept = [(tuple(float(v) / scale for v in box), float(prob))
                for box, prob in zip(boxes, probs)]
        return [(box, prob) for box, prob in kept if prob >= self.min_prob
                and max(box[2] - box[0], box[3] - box[1]) >= self.min_face_px]


def key_positions(count: int, every: int, *, last: bool) -> list[int]:
    """Frames searched in full among `count`: every `every`-th, and the last once it is known."""
    keys = list(range(0, count, every))
    if last and count and (count - 1) % every:
        keys.append(count - 1)
    return keys


def pair_up(a: Sequence[tuple[Box, float]], b: Sequence[tuple[Box, float]], *,
            max_shift: float) -> list[tuple[Box, Box]] | None:
    """The faces of two frames paired, closest first, or None unless every face has a partner
    at most `max_shift` face sizes away and of a similar size."""
    if len(a) != len(b):
        return None
    pairs = sorted((box_distance(x, y), i, j) for i, (x, _) in enumerate(a)
                   for j, (y, _) in enumerate(b) if size_ratio(x, y) <= 2.0)
    taken_a, taken_b, out = set(), set(), []
    for distance, i, j in pairs:
        if distance <= max_shift and i not in taken_a and j not in taken_b:
            taken_a.add(i)
            taken_b.add(j)
            out.append((a[i][0], b[j][0]))
    return out if len(out) == len(a) else None


def interpolate(a: Box, b: Box, t: float) -> Box:
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def around(box: Box, shifts=(-0.1, 0.0, 0.1), sides=(0.9, 1.0, 1.15)) -> list[Box]:
    """Square boxes near `box` (centre moved by up to a tenth of its size, side scaled), for
    MTCNN's later stages to regress onto the face: they correct a box that is near, not one
    that is far."""
    side = box_side(box)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return [(cx + dx * side - f * side / 2, cy + dy * side - f * side / 2,
             cx + dx * side + f * side / 2, cy + dy * side + f * side / 2)
            for dx in shifts for dy in shifts for f in sides]


def square_crop(frame: np.ndarray, box: Box, *, size: int = CROP_SIZE) -> np.ndarray:
    """The tight square around `box` (side max(w, h), same centre, no margin), zero-padded
    outside the frame, resized to size x size."""
    x1, y1, x2, y2 = box
    side = max(1, round(max(x2 - x1, y2 - y1)))
    left, top = round((x1 + x2 - side) / 2), round((y1 + y2 - side) / 2)
    square = np.zeros((side, side, 3), dtype=frame.dtype)
    height, width = frame.shape[:2]
    fx1, fy1 = max(left, 0), max(top, 0)
    fx2, fy2 = min(left + side, width), min(top + side, height)
    if fx2 > fx1 and fy2 > fy1:
        square[fy1 - top:fy2 - top, fx1 - left:fx2 - left] = frame[fy1:fy2, fx1:fx2]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


def assign_tracks(boxes_per_frame: Sequence[Sequence[Box]], *, max_shift: float = 0.75,
                  max_size_ratio: float = 2.0) -> list[list[int]]:
    """Track ids for boxes in consecutive frames, matched greedily, closest pairs first.

    A box continues the track whose last box (from any earlier frame, so a missed detection
    does not split a track) is nearest, if the centres are at most `max_shift` face sizes
    apart and the sizes differ by at most `max_size_ratio`; otherwise it starts a new track.
    """
    last: dict[int, Box] = {}  # track id -> its most recent box
    ids_per_frame = []
    for boxes in boxes_per_frame:
        pairs = sorted((box_distance(last[track], box), track, j)
                       for track in last for j, box in enumerate(boxes)
                       if size_ratio(last[track], box) <= max_size_ratio)
        ids: list[int | None] = [None] * len(boxes)
        taken = set()
        for distance, track, j in pairs:
            if distance > max_shift:
                break
            if ids[j] is None and track not in taken:
                ids[j] = track
                taken.add(track)
        for j, box in enumerate(boxes):
            if ids[j] is None:
                ids[j] = len(last)
            last[ids[j]] = box
        ids_per_frame.append(ids)
    return ids_per_frame


def box_side(box: Box) -> float:
    return max(box[2] - box[0], box[3] - box[1], 1e-6)


def box_distance(a: Box, b: Box) -> float:
    """Centre distance in units of the mean face size (scale-free: works at any resolution)."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    return float(np.hypot(dx, dy)) / ((box_side(a) + box_side(b)) / 2)


def size_ratio(a: Box, b: Box) -> float:
    return max(box_side(a), box_side(b)) / min(box_side(a), box_side(b))


# --- MTCNN, the same decisions as facenet-pytorch's detect_face, about twice as fast on a CPU ---

def to_channels_last(net: torch.nn.Module) -> torch.nn.Module:
    """Run `net` in channels-last layout: oneDNN's max-pooling and small convolutions are several
    times faster in it on a CPU. Outputs match the default layout to float rounding."""
    net.to(memory_format=torch.channels_last)
    forward = net.forward
    net.forward = lambda x: forward(x.contiguous(memory_format=torch.channels_last))
    return net


def integral_images(frames: np.ndarray) -> torch.Tensor:
    """Summed-area tables of uint8 frames [B, H, W, C] as one [B * (H+1) * (W+1), C] tensor:
    row (b, r, c) holds the sum of frame b's pixels above row r and left of column c. Exact
    (int32 holds 255 x 8.4 megapixels; larger frames get float64, exact to 2^53)."""
    height, width = frames.shape[1:3]
    depth = cv2.CV_32S if height * width * 255 < 2**31 else cv2.CV_64F
    tables = [cv2.integral(frame, sdepth=depth) for frame in frames]
    return torch.from_numpy(np.stack(tables).reshape(-1, frames.shape[3]))


def adaptive_bins(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive average pooling's bins for n pixels to `size`: floor(i*n/size) .. ceil(...)."""
    i = torch.arange(size)
    return (torch.div(i * n, size, rounding_mode="floor"),
            torch.div((i + 1) * n + size - 1, size, rounding_mode="floor"))


def resample_frames(integral: torch.Tensor, table_shape: tuple[int, int],
                    size: tuple[int, int]) -> torch.Tensor:
    """The whole frames area-resampled to (height, width) `size` ([B, C, h, w], channels-last
    memory), equal to facenet-pytorch's `imresample` of the batch to float rounding: one bin sum
    is four look-ups in the summed-area tables, gathered a row and a column at a time."""
    rows, cols = table_shape
    tables = integral.view(-1, rows, cols, integral.shape[1])
    r0, r1 = adaptive_bins(rows - 1, size[0])
    c0, c1 = adaptive_bins(cols - 1, size[1])
    top, bottom = tables.index_select(1, r0), tables.index_select(1, r1)
    sums = (bottom.index_select(2, c1) - top.index_select(2, c1)
            - bottom.index_select(2, c0) + top.index_select(2, c0))
    counts = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).to(torch.float32)[None, :, :, None]
    return (sums.to(torch.float32) / counts).permute(0, 3, 1, 2)


def resample_boxes(integral: torch.Tensor, table_shape: tuple[int, int],
                   image_inds: torch.Tensor, y, ey, x, ex, size: int) -> torch.Tensor:
    """Every box of `pad` resampled to size x size, equal to facenet-pytorch's per-box
    `imresample` (area interpolation, i.e. adaptive average pooling) in one vectorised step.

    `integral` comes from `integral_images`, `table_shape` is (H+1, W+1). Box k covers rows
    y[k]-1 .. ey[k]-1 and columns x[k]-1 .. ex[k]-1 (the 1-based inclusive coordinates `pad`
    returns); adaptive pooling's bin i spans floor(i*n/size) .. ceil((i+1)*n/size) of those n
    pixels. Each bin's sum is four table look-ups, exact in integers; the means match the
    pooling's to float rounding (1 ulp)."""
    i = torch.arange(size)

    def bins(start, stop):  # adaptive_bins, for many boxes at once
        start = torch.as_tensor(start, dtype=torch.int64) - 1
        n = torch.as_tensor(stop, dtype=torch.int64) - start
        lo = start[:, None] + torch.div(i * n[:, None], size, rounding_mode="floor")
        hi = start[:, None] + torch.div((i + 1) * n[:, None] + size - 1, size,
                                        rounding_mode="floor")
        return lo, hi

    rows, cols = table_shape
    r0, r1 = bins(y, ey)
    c0, c1 = bins(x, ex)
    base = image_inds.to(torch.int64)[:, None, None] * (rows * cols)
    r0, r1 = base + r0[:, :, None] * cols, base + r1[:, :, None] * cols
    c0, c1 = c0[:, None, :], c1[:, None, :]
    corners = torch.stack((r1 + c1, r0 + c1, r1 + c0, r0 + c0))  # [4, N, size, size]
    a, b, c, d = integral.index_select(0, corners.view(-1)).view(4, -1, size, size,
                                                                  integral.shape[1]).unbind(0)
    counts = ((r1 - r0) // cols * (c1 - c0)).to(torch.float32)[..., None]
    return ((a - b - c + d).to(torch.float32) / counts).permute(0, 3, 1, 2)


def detect_face_fast(frames: np.ndarray, mtcnn: MTCNN, *, min_face_size: float | None = None,
                     skip_levels: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes [n, 4], probabilities [n]) per frame of a uint8 RGB batch [B, H, W, 3].

    facenet-pytorch's `detect_face` step by step, with its settings (`min_face_size` unless
    given, `thresholds`, `factor`) and nets (less the image pyramid's `skip_levels` finest
    levels, which find only the smallest faces), except that the candidate boxes of the second and third
    stage are resampled all at once (`resample_boxes`) rather than one interpolate call per box
    (about 200 boxes per 1080p frame, a third of the detection time). Boxes come largest first,
    as MTCNN(select_largest=True) returns them."""
    frames = np.ascontiguousarray(frames)
    with torch.inference_mode():
        integral = integral_images(frames)
        boxes, image_inds = propose(integral, frames.shape, mtcnn, min_face_size, skip_levels)
        return refine(integral, frames.shape, boxes, image_inds, mtcnn)


def refine_boxes(frames: np.ndarray, candidates: Sequence[Sequence[Box]], mtcnn: MTCNN
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """MTCNN's second and third stage (R-Net, O-Net, with their thresholds, box regression and
    merging) on given candidate boxes instead of the first stage's: (boxes, probabilities) per
    frame of the batch, as `detect_face_fast` returns them. A face near a candidate comes out
    with the box and probability the full detector would give it; no face, no box."""
    frames = np.ascontiguousarray(frames)
    rows = [(*box, 1.0) for frame_boxes in candidates for box in frame_boxes]
    inds = [b for b, frame_boxes in enumerate(candidates) for _ in frame_boxes]
    with torch.inference_mode():
        boxes = rerec(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5))
        return refine(integral_images(frames), frames.shape, boxes,
                      torch.tensor(inds, dtype=torch.int64), mtcnn)


def propose(integral: torch.Tensor, shape: tuple[int, ...], mtcnn: MTCNN,
            min_face_size: float | None, skip_levels: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """MTCNN's first stage: P-Net over the image pyramid down from faces of `min_face_size`
    (less its `skip_levels` finest levels), merged, regressed and squared; (boxes [n, 5] with
    scores, frame of each box)."""
    batch_size, h, w = shape[:3]
    m = 12.0 / (min_face_size or mtcnn.min_face_size)
    minl = min(h, w) * m
    scales, scale_i = [], m
    while minl >= 12:
        scales.append(scale_i)
        scale_i *= mtcnn.factor
        minl *= mtcnn.factor
    scales = scales[skip_levels:]
    if not scales:  # frames smaller than the smallest face searched for
        return torch.zeros((0, 5)), torch.zeros(0, dtype=torch.int64)

    boxes, image_inds, scale_picks, offset = [], [], [], 0
    for scale in scales:
        im_data = resample_frames(integral, (h + 1, w + 1),
                                  (int(h * scale + 1), int(w * scale + 1)))
        reg, probs = mtcnn.pnet((im_data - 127.5) * 0.0078125)
        boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale,
                                                            mtcnn.thresholds[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]
    boxes, image_inds = torch.cat(boxes), torch.cat(image_inds)
    scale_picks = torch.cat(scale_picks)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                         boxes[:, 4]]).permute(1, 0)
    return rerec(boxes), image_inds


def refine(integral: torch.Tensor, shape: tuple[int, ...], boxes: torch.Tensor,
           image_inds: torch.Tensor, mtcnn: MTCNN) -> list[tuple[np.ndarray, np.ndarray]]:
    """MTCNN's second and third stage on candidate boxes [n, 5]; per frame (boxes, probs),
    largest first."""
    batch_size, h, w = shape[:3]
    threshold = mtcnn.thresholds
    for stage, (net, size) in enumerate(((mtcnn.rnet, 24), (mtcnn.onet, 48)), start=1):
        if len(boxes) == 0:
            break
        y, ey, x, ex = pad(boxes, w, h)
        inside = torch.from_numpy((ey > y - 1) & (ex > x - 1))
        if not bool(inside.all()):  # a box wholly outside the frame: nothing to resample
            boxes, image_inds = boxes[inside], image_inds[inside]
            y, ey, x, ex = (v[inside.numpy()] for v in (y, ey, x, ex))
        im_data = resample_boxes(integral, (h + 1, w + 1), image_inds, y, ey, x, ex, size)
        im_data = (im_data - 127.5) * 0.0078125
        out = [torch.cat(parts) for parts in zip(*(net(im_data[i:i + 512])
                                                   for i in range(0, len(im_data), 512)))]
        reg, score = out[0], out[-1][:, 1]
        ipass = score > threshold[stage]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, reg = image_inds[ipass], reg[ipass]
        if stage == 1:
            pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes = rerec(bbreg(boxes[pick], reg[pick]))
            image_inds = image_inds[pick]
        else:
            boxes = bbreg(boxes, reg)
            pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
            boxes, image_inds = boxes[pick], image_inds[pick]

    boxes, image_inds = boxes.numpy(), image_inds.numpy()
    out = []
    for b in range(batch_size):
        frame_boxes = boxes[image_inds == b]
        order = np.argsort((frame_boxes[:, 2] - frame_boxes[:, 0])
                           * (frame_boxes[:, 3] - frame_boxes[:, 1]))[::-1]
        frame_boxes = frame_boxes[order]
        out.append((frame_boxes[:, :4], frame_boxes[:, 4]))
    return out
