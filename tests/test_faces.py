"""Face detection, training-style crops, and grouping faces into tracks."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_kd.pipeline.faces import CROP_SIZE, FaceDetector, assign_tracks, square_crop
from deepfake_kd.pipeline.video import sample_frames


def test_faces_found_only_where_the_face_is(face_clip, detector, face_frame_indices):
    video = sample_frames(face_clip, num_frames=12)
    faces = detector.detect(video.frames)
    assert [i for i, frame_faces in enumerate(faces) if frame_faces] == face_frame_indices
    found = [frame_faces[0] for frame_faces in faces if frame_faces]
    assert all(len(faces[i]) == 1 for i in face_frame_indices)
    assert {face.track_id for face in found} == {0}  # one person, one track
    assert all(face.prob >= 0.9 for face in found)
    assert all(face.crop.shape == (CROP_SIZE, CROP_SIZE, 3) and face.crop.dtype == np.uint8
               for face in found)
    # The face moves right and grows across the clip (see conftest.landscape_frames).
    centres = [(face.box[0] + face.box[2]) / 2 for face in found]
    sides = [face.box[2] - face.box[0] for face in found]
    assert centres == sorted(centres) and sides[-1] > sides[0]


def test_boxes_are_in_full_resolution_pixels(face_clip, detector, face_frame_indices):
    first = face_frame_indices[0]
    frames = sample_frames(face_clip, num_frames=12).frames[first:first + 2]
    full = detector.detect(frames)
    shrunk = FaceDetector(detect_long_side=320).detect(frames)
    for a, b in zip(full, shrunk):
        assert np.allclose(a[0].box, b[0].box, atol=8)


def test_portrait_frames(portrait_clip, detector):
    faces = detector.detect(sample_frames(portrait_clip, num_frames=8).frames)
    assert all(len(frame_faces) == 1 for frame_faces in faces)


def test_square_crop_is_tight_centred_and_padded():
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[20:60, 50:90] = 255  # a 40x40 white square
    crop = square_crop(frame, (50, 30, 90, 50), size=40)  # 40 wide, 20 tall: side 40, centred
    assert crop.shape == (40, 40, 3)
    assert crop[:, :, 0].min() == 255  # exactly the white square: no margin, no black
    corner = square_crop(frame, (-10, -10, 10, 10), size=20)  # half outside the frame
    assert corner[:10].max() == 0 and corner[:, :10].max() == 0  # zero-padded, not stretched
    big = square_crop(np.full((500, 500, 3), 7, np.uint8), (0, 0, 400, 300), size=CROP_SIZE)
    assert big.shape == (CROP_SIZE, CROP_SIZE, 3)


def box(cx, cy, side=50):
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def test_two_people_keep_their_tracks():
    left = [box(100 + 5 * k, 100) for k in range(6)]
    right = [box(300 - 5 * k, 110, side=60) for k in range(6)]
    frames = [[left[0], right[0]],
              [right[1], left[1]],  # detection order changes
              [right[2]],  # left person missed
              [],  # nobody detected
              [left[4], right[4]],  # left comes back: same track, not a new one
              [right[5], left[5]]]
    tracks = assign_tracks(frames)
    assert tracks == [[0, 1], [1, 0], [1], [], [0, 1], [1, 0]]


def test_distant_or_differently_sized_faces_start_new_tracks():
    tracks = assign_tracks([[box(100, 100)], [box(400, 100)], [box(400, 100, side=200)]])
    assert tracks == [[0], [1], [2]]
    assert assign_tracks([]) == []


@pytest.mark.parametrize("min_face_px, expected", [(64, 1), (500, 0)])
def test_small_faces_are_dropped(face_clip, face_frame_indices, min_face_px, expected):
    frame = sample_frames(face_clip, num_frames=12).frames[face_frame_indices[0]]
    faces = FaceDetector(min_face_px=min_face_px).detect([frame])
    assert len(faces[0]) == expected


@pytest.mark.parametrize("shape", [(16, 16, 3), (4, 900, 3)])
def test_frames_too_small_for_a_face(detector, shape):
    assert detector.detect([np.zeros(shape, np.uint8)] * 2) == [[], []]


def test_fast_mtcnn_matches_facenet(landscape, portrait_clip):
    """detect_face_fast makes facenet-pytorch's decisions: same boxes and probabilities."""
    from facenet_pytorch import MTCNN

    from deepfake_kd.pipeline.faces import detect_face_fast, to_channels_last

    reference = MTCNN(keep_all=True)
    fast = MTCNN(keep_all=True)
    for net in (fast.pnet, fast.rnet, fast.onet):
        to_channels_last(net)
    for frames in (np.stack(landscape), np.stack(sample_frames(portrait_clip, 8).frames)):
        want_boxes, want_probs = reference.detect(frames)
        for got, boxes, probs in zip(detect_face_fast(frames, fast), want_boxes, want_probs):
            if boxes is None:
                assert len(got[0]) == 0
                continue
            assert np.allclose(got[0], np.asarray(boxes, dtype=np.float32), atol=1e-3)
            assert np.allclose(got[1], np.asarray(probs, dtype=np.float32), atol=1e-5)


def test_box_and_frame_resampling_equal_area_interpolation():
    import torch
    from facenet_pytorch.models.utils.detect_face import imresample

    from deepfake_kd.pipeline.faces import integral_images, resample_boxes, resample_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    integral = integral_images(frames)
    for size in ((12, 17), (20, 29), (37, 53)):
        assert torch.allclose(resample_frames(integral, (38, 54), size), imresample(images, size),
                              rtol=0, atol=1e-4)  # to float rounding (1 ulp)
    # 1-based inclusive boxes as facenet's `pad` gives them: small, large, at the borders
    y, ey = np.array([1, 5, 1, 30]), np.array([37, 9, 10, 37])
    x, ex = np.array([1, 40, 1, 2]), np.array([53, 53, 3, 20])
    inds = torch.tensor([0, 1, 1, 0])
    got = resample_boxes(integral, (38, 54), inds, y, ey, x, ex, 24)
    for k in range(4):
        crop = images[inds[k], :, y[k] - 1:ey[k], x[k] - 1:ex[k]].unsqueeze(0)
        assert torch.allclose(got[k:k + 1], imresample(crop, (24, 24)), rtol=0, atol=1e-4)


def test_faces_are_followed_between_searched_frames(portrait_clip, detector):
    """8 frames, one face throughout: MTCNN searches frames 0, 4 and 7 in full; the face is
    followed through the others, with the boxes and track a full search finds."""
    frames = sample_frames(portrait_clip, num_frames=8).frames
    counts = {}
    followed = detector.detect(frames, counts=counts)
    assert counts == {"detected": 3, "tracked": 5}
    searched = FaceDetector(key_every=1).detect(frames)
    for a, b in zip(followed, searched):
        assert len(a) == len(b) == 1 and a[0].track_id == b[0].track_id == 0
        assert np.allclose(a[0].box, b[0].box, atol=6) and a[0].prob >= 0.9


def test_eager_detection_searches_key_frames_as_they_arrive(portrait_clip, detector):
    """`eager` (frames still decoding): each key frame is searched before the frames after it
    are pulled from the stream, not once 8 have gathered; the faces are the same."""
    frames = sample_frames(portrait_clip, num_frames=8).frames
    pulled, searched_after = [], []
    search = detector.search

    def recording_search(frames_seen, positions, *args):
        searched_after.append((list(positions), len(pulled)))
        return search(frames_seen, positions, *args)

    def stream():
        for frame in frames:
            pulled.append(frame)
            yield frame

    detector.search = recording_search
    try:
        eager = detector.detect(stream(), total=len(frames), eager=True)
    finally:
        del detector.search
    assert searched_after == [([0], 1), ([4], 5), ([7], 8)]  # key_every 4, and the last
    batched = detector.detect(frames)
    assert [[f.track_id for f in faces] for faces in eager] == \
        [[f.track_id for f in faces] for faces in batched]
    for a, b in zip(eager, batched):  # batch size moves MTCNN's floats by ~1e-5 px
        assert np.allclose([f.box for f in a], [f.box for f in b], atol=0.01)


def test_frames_where_faces_come_or_go_are_searched(face_clip, detector, face_frame_indices):
    """The face is in frames 2-9 of 12; searched frames 0, 4, 8, 11: between 0 and 4 and
    between 8 and 11 faces come and go, so those frames get the full search too."""
    counts = {}
    faces = detector.detect(sample_frames(face_clip, num_frames=12).frames, counts=counts)
    assert [i for i, frame_faces in enumerate(faces) if frame_faces] == face_frame_indices
    assert counts == {"detected": 9, "tracked": 3}  # 5, 6, 7 followed


def test_a_face_lost_between_searched_frames_is_searched_for(landscape, detector):
    """A frame where the face is not where its track says (here: gone) is searched in full."""
    frames = [landscape[k] for k in (2, 3, 4, 5, 6)]
    frames[2] = landscape[0]  # blank in the middle
    counts = {}
    faces = detector.detect(frames, counts=counts)
    assert [len(frame_faces) for frame_faces in faces] == [1, 1, 0, 1, 1]
    assert counts["detected"] >= 3 and counts["tracked"] <= 2


def test_pairing_and_positions_between():
    from deepfake_kd.pipeline.faces import interpolate, key_positions, pair_up

    assert key_positions(12, 4, last=False) == [0, 4, 8]
    assert key_positions(12, 4, last=True) == [0, 4, 8, 11]
    assert key_positions(9, 4, last=True) == [0, 4, 8]
    a, b = (box(100, 100), 0.99), (box(300, 100), 0.99)
    assert pair_up([a, b], [(box(310, 100), 0.99), (box(110, 100), 0.99)], max_shift=1) == [
        (a[0], box(110, 100)), (b[0], box(310, 100))]
    assert pair_up([a], [a, b], max_shift=1) is None  # a face came
    assert pair_up([a], [(box(400, 100), 0.99)], max_shift=1) is None  # too far to be the same
    assert interpolate(box(100, 100), box(200, 100), 0.25) == box(125, 100)
