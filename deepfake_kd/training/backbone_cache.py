"""Backbone feature maps computed once per crop, for training a model whose trunks are frozen.

On the project's 2-core CPU the teacher's two EfficientNet trunks cost most of a training step
(measured: 21 img/s for the full trunk's forward pass, 12 img/s for both trunks, 4 img/s for a
whole teacher training step). With the trunks frozen their maps never change, so they are
computed once and the rest of the model (for the teacher: patch embeddings, transformers, heads)
trains on the cached maps through `forward_from_features`. Any model with `trunks()` and
`forward_from_features(*maps)` can train this way: the teacher and the plain baseline alike.

A trunk that is a weight-identical copy of another trunk's stem and first stages (the teacher's
large branch, when both branches start from the same ImageNet weights and those stages stay
frozen, as in the released teacher) is not run again: its map is the other trunk's intermediate.
Each trunk's maps are cached in their own file, keyed by that trunk's weights and the crops, so
two models sharing a trunk share its cache.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from ..models import EfficientNetTrunk, FaceClassifier
from ..util import atomic_path, crops_digest


def is_prefix_of(short: EfficientNetTrunk, full: EfficientNetTrunk) -> bool:
    """True when `short` is `full` cut after fewer stages, weight for weight."""
    if len(short.blocks) >= len(full.blocks) or not isinstance(short.conv_head, torch.nn.Identity):
        return False
    own, other = short.state_dict(), full.state_dict()
    return all(key in other and torch.equal(other[key], value) for key, value in own.items())


@torch.no_grad()
def trunk_maps(trunks: tuple[EfficientNetTrunk, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """Each trunk's map of a preprocessed batch; prefix trunks reuse an intermediate map."""
    maps: list[torch.Tensor | None] = [None] * len(trunks)
    for i, trunk in enumerate(trunks):
        if maps[i] is not None:
            continue
        prefixes = {len(t.blocks): j for j, t in enumerate(trunks)
                    if maps[j] is None and j != i and is_prefix_of(t, trunk)}
        h = trunk.bn1(trunk.conv_stem(x))
        for stage, block in enumerate(trunk.blocks, start=1):
            h = block(h)
            if stage in prefixes:
                maps[prefixes[stage]] = h
        maps[i] = trunk.bn2(trunk.conv_head(h))
    return maps


def trunk_digest(trunk: EfficientNetTrunk) -> str:
    digest = hashlib.sha1()
    for key, tensor in trunk.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_trunk_maps(model: FaceClassifier, crops: np.ndarray, *, cache_dir: str | Path,
                      batch_size: int = 32, progress: bool = True) -> list[np.ndarray]:
    """Every trunk's map of every crop (float16 [N,C,H,W], memory-mapped from `cache_dir`),
    in the order of `model.trunks()`; computed on the first call."""
    trunks = model.trunks()
    crops_key = crops_digest(crops)
    paths = [Path(cache_dir) / f"maps-{trunk_digest(t)}-{crops_key}.npy" for t in trunks]
    if not all(p.is_file() for p in paths):
        model.eval()
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        probe = trunk_maps(trunks, model.preprocess(np.asarray(crops[:1])))
        with ExitStack() as stack:  # every file appears once all of them are complete
            tmp = [stack.enter_context(atomic_path(p)) for p in paths]
            arrays = [np.lib.format.open_memmap(t, mode="w+", dtype=np.float16,
                                                shape=(len(crops), *m.shape[1:]))
                      for t, m in zip(tmp, probe)]
            starts = range(0, len(crops), batch_size)
            if progress:
                from tqdm import tqdm

                starts = tqdm(starts, desc="backbone maps", unit="batch")
            for start in starts:
                x = model.preprocess(np.asarray(crops[start:start + batch_size]))
                for array, fmap in zip(arrays, trunk_maps(trunks, x)):
                    array[start:start + len(x)] = fmap.half().numpy()
            for array in arrays:
                array.flush()
            del arrays
    return [np.load(p, mmap_mode="r") for p in paths]
