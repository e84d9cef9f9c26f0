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
    to MTCNN at once: 8 ran as fast as 32 and lets `detect` report progress. Those timings were
    taken with facenet-pytorch's own `detect`; `detect_face_fast` finds the same boxes in about
    half the time (the 96 frames: 10.1 s -> 5.6 s, one thread, measured interleaved on a 2-core
    EPYC shared with two training jobs). MTCNN then searches faces down to `min_face_px` (at the
    detection scale; at least its own 20 px) rather than always 20 px: on the three clips the
    main face was found in 95 of 96 frames (94 before) and detection took 25% less time again
    (lynaeydofd 3.3 -> 2.4 s, brtujopkby 2.6 -> 2.1 s, yhffcuhhjy 1.3 -> 0.65 s); boxes move by
    a few pixels (median IoU 0.92 with the old ones), as MTCNN's do between pyramid scales.
    """

    def __init__(self, *, detect_long_side: int = 640, min_prob: float = 0.9,
                 min_face_px: int = 64, crop_size: int = CROP_SIZE, batch_size: int = 8,
                 max_shift: float = 0.75, device: str = "cpu"):
        self.mtcnn = MTCNN(keep_all=True, device=device)
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            to_channels_last(net)
        self.detect_long_side = detect_long_side
        self.min_prob = min_prob
        self.min_face_px = min_face_px
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.max_shift = max_shift

    def detect(self, frames: Iterable[np.ndarray], *,
               progress: Callable[[float], None] | None = None, total: int | None = None
               ) -> list[list[Face]]:
        """Faces per frame for equal-size uint8 RGB frames in time order, with track ids.

        `frames` may be a list or any iterable, e.g. frames still being decoded: each batch goes
        to MTCNN as soon as it is full. `total` (default: len(frames)) scales `progress`."""
        if total is None and hasattr(frames, "__len__"):
            total = len(frames)
        seen, batch, boxes, probs = [], [], [], []
        for frame in itertools.chain(frames, [None]):
            if frame is not None:
                seen.append(frame)
                batch.append(frame)
            if batch and (frame is None or len(batch) == self.batch_size):
                batch_boxes, batch_probs = self.detect_boxes(batch)
                boxes += batch_boxes
                probs += batch_probs
                batch = []
                if progress:
                    progress(min(1.0, len(seen) / max(total or len(seen), 1)))
        frames = seen
        tracks = assign_tracks(boxes, max_shift=self.max_shift)
        return [[Face(box=box, prob=prob, track_id=track,
                      crop=square_crop(frame, box, size=self.crop_size))
                 for box, prob, track in zip(frame_boxes, frame_probs, frame_tracks)]
                for frame, frame_boxes, frame_probs, frame_tracks
                in zip(frames, boxes, probs, tracks)]

    def detect_boxes(self, frames: Sequence[np.ndarray]
                     ) -> tuple[list[list[Box]], list[list[float]]]:
        """Kept boxes (in the frames' pixels) and probabilities, per frame of one batch."""
        height, width = frames[0].shape[:2]
        scale = min(1.0, self.detect_long_side / max(height, width))
        size = (round(width * scale), round(height * scale))
        # MTCNN searches faces down to this size (pixels of the shrunk frame): no smaller than
        # the faces kept, nor than MTCNN's own 20 px.
        min_face_size = max(self.mtcnn.min_face_size, self.min_face_px * scale)
        if min(size) < min_face_size:  # no room for a face; MTCNN would fail
            return [[] for _ in frames], [[] for _ in frames]
        small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) if scale < 1 else f
                          for f in frames])
        boxes, probs = [], []
        for frame_boxes, frame_probs in detect_face_fast(small, self.mtcnn,
                                                         min_face_size=min_face_size):
            kept = [(tuple(float(v) / scale for v in box), float(prob))
                    for box, prob in zip(frame_boxes, frame_probs)]
            kept = [(box, prob) for box, prob in kept if prob >= self.min_prob
                    and max(box[2] - box[0], box[3] - box[1]) >= self.min_face_px]
            boxes.append([box for box, _ in kept])
            probs.append([prob for _, prob in kept])
        return boxes, probs


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


def detect_face_fast(frames: np.ndarray, mtcnn: MTCNN, *, min_face_size: float | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes [n, 4], probabilities [n]) per frame of a uint8 RGB batch [B, H, W, 3].

    facenet-pytorch's `detect_face` step by step, with its settings (`min_face_size` unless
    given, `thresholds`, `factor`) and nets, except that the candidate boxes of the second and third
    stage are resampled all at once (`resample_boxes`) rather than one interpolate call per box
    (about 200 boxes per 1080p frame, a third of the detection time). Boxes come largest first,
    as MTCNN(select_largest=True) returns them."""
    pnet, rnet, onet = mtcnn.pnet, mtcnn.rnet, mtcnn.onet
    threshold = mtcnn.thresholds
    frames = np.ascontiguousarray(frames)
    batch_size, h, w = frames.shape[:3]
    with torch.inference_mode():
        integral = integral_images(frames)
        m = 12.0 / (min_face_size or mtcnn.min_face_size)
        minl = min(h, w) * m
        scales, scale_i = [], m
        while minl >= 12:
            scales.append(scale_i)
            scale_i *= mtcnn.factor
            minl *= mtcnn.factor
        if not scales:  # frames smaller than the smallest face searched for
            return [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))] * batch_size

        boxes, image_inds, scale_picks, offset = [], [], [], 0
        for scale in scales:
            im_data = resample_frames(integral, (h + 1, w + 1),
                                      (int(h * scale + 1), int(w * scale + 1)))
            reg, probs = pnet((im_data - 127.5) * 0.0078125)
            boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale,
                                                                threshold[0])
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
        boxes = rerec(boxes)

        for stage, (net, size) in enumerate(((rnet, 24), (onet, 48)), start=1):
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
