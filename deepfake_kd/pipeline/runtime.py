"""Inference runtimes: run any model of the one interface faster on a CPU, with the same outputs.

`accelerate(model, runtime)` returns a `FaceClassifier` with the same `preprocess`,
`predict_proba`, `input_size` and `num_parameters` (and the same weights), whose forward pass runs
in another runtime:

- `eager`: the model itself (what training, `evaluate` and Grad-CAM use).
- `folded`: the model in PyTorch with every batch norm folded into the convolution before it:
  the same arithmetic up to float rounding (logits within ~1e-5), half the layers. Only the
  folded convolutions are copied; the rest of the weights are shared with the model. Not the
  default: on the 2-core Xeon the gain did not hold up. A profile of the teacher's batch of 32
  showed batch norm at 19% of the time, and folding it removed that, but interleaved bench runs
  gave both signs (the teacher's batch of 32: 24 against 38 ms per face in one run, 57 against
  40 in another).
- `jit`: TorchScript, traced, frozen and `optimize_for_inference` (batch-norm folded into the
  convolutions, oneDNN layouts). No extra dependency.
- `onnx`: ONNX Runtime on the model exported to ONNX: the default (the app, `analyze`,
  `bench`). The export is cached on disk (DEEPFAKE_KD_CACHE), keyed by the weights, so only the
  first load pays for it (about 8 s for the teacher). Why the default: on the idle 2-core Xeon,
  in one `bench` session, it took the teacher from 46.6 to 28.6 ms per face at batch 1 and from
  26.2 to 13.2 ms at batch 32, the student (96 px) from 4.36 to 1.16 and 1.67 to 0.87 ms, and
  the whole clip from 3.29 / 3.13 s to 2.42 / 2.90 s (two runs each; README "Performance").
  The cost is memory: ONNX Runtime holds its own copy of the weights, packed for its matrix
  kernels, beside the eager model (kept for Grad-CAM): the teacher's session adds 388 MB at load
  (the export's weights live in a file beside it, so its load no longer parses them into memory
  first: +543 MB when they were inside it), and its largest batch's activations (below).
- `onnx-shared`: ONNX Runtime on the eager model's own memory (`share_weights`): the weights are
  held once, and each call packs the matrices again. Measured on the idle 2-core Xeon, the
  teacher's session added 36 instead of 388 MB at load, and took 38.9 instead of 25.9 ms per
  face at batch 1, 11.6 instead of 9.0 at batch 16 (8 and 4 calls each, interleaved). The
  app's default (`serving.loading.SERVING_RUNTIME`), where memory is held for hours; not the
  CLI's.
- `onnx-int8`: the ONNX model statically quantised to int8 (per-channel weights, activation
  ranges from real face crops passed as `calibration`); about twice as fast again for the
  student on a CPU with VNNI. It changes the arithmetic: use it only where
  `bench --auc-manifest` shows the AUC within 0.002 of eager.

`jit` and `onnx` keep fp32 arithmetic: logits match eager to ~1e-5, so AUC is unchanged (checked
by `python -m deepfake_kd bench --auc-manifest MANIFEST`). Measured on the 2-core EPYC (contended,
one thread): the teacher's batch of 32 faces took 2.8 s eager, 0.94 s jit, 0.52 s onnx; the
student's 1-face call 1.5 ms eager, 0.9 ms jit, 0.6 ms onnx.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch
from timm.layers import BatchNormAct2d
from torch import nn

from ..errors import DeepfakeKDError
from ..models import FaceClassifier
from ..util import atomic_path

RUNTIMES = ("folded", "eager", "jit", "onnx", "onnx-shared", "onnx-int8")
DEFAULT_RUNTIME = "onnx"
RUNTIME_LABELS = {  # what a page says a model runs on
    "eager": "PyTorch", "folded": "PyTorch, batch norms folded", "jit": "TorchScript",
    "onnx": "ONNX Runtime", "onnx-shared": "ONNX Runtime, weights shared with PyTorch",
    "onnx-int8": "ONNX Runtime, int8"}
ENV_CACHE = "DEEPFAKE_KD_CACHE"  # where ONNX exports are kept (default ~/.cache/deepfake-kd/onnx)
CALIBRATION_CROPS = 512  # face crops that set the int8 activation ranges
ONNX_OPSET = 17
EXPORT_FORMAT = 2  # 2: weights in a file beside the graph, the shared-weight map in its metadata
SHARED_WEIGHTS = "deepfake_kd.shared_weights"  # metadata key: initializer -> [tensor, transposed]
EXTERNAL_MIN_BYTES = 4096  # initializers this large go to the weights file (onnx's default 1 KiB)


class AcceleratedModel(FaceClassifier):
    """`model` behind another runtime; preprocessing and parameters are the model's own."""

    def __init__(self, model: FaceClassifier, runtime: str, run: Callable[[torch.Tensor],
                                                                          torch.Tensor]):
        super().__init__(input_size=model.input_size, mean=model.mean, std=model.std)
        self.model = model.eval()  # kept: num_parameters() and the weights stay the model's
        self.runtime = runtime
        self._run = run
        self.eval()

    def unwrap(self) -> FaceClassifier:
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._run(x.float().contiguous())

    def preprocess(self, crops, *, size: int | None = None) -> torch.Tensor:
        return self.model.preprocess(crops, size=size)


def accelerate(model: FaceClassifier, runtime: str = DEFAULT_RUNTIME, *,
               cache_dir: str | Path | None = None, calibration=None) -> FaceClassifier:
    """`model` unchanged for "eager", else an `AcceleratedModel` running `runtime`.
    "onnx-int8" needs `calibration`: uint8 RGB face crops [N, H, W, 3] like the ones it will
    score (a few hundred)."""
    model.eval()
    if runtime == "eager":
        return model
    if runtime == "folded":
        return AcceleratedModel(model, runtime, fold_batchnorm(model).forward)
    if runtime == "jit":
        return AcceleratedModel(model, runtime, jit_runner(model))
    if runtime in ("onnx", "onnx-shared"):
        return AcceleratedModel(model, runtime, onnx_runner(model, cache_dir=cache_dir,
                                                            share=runtime == "onnx-shared"))
    if runtime == "onnx-int8":
        if calibration is None or len(calibration) == 0:
            raise DeepfakeKDError("the onnx-int8 runtime needs calibration face crops "
                                  "(--calibration MANIFEST)")
        return AcceleratedModel(model, runtime, onnx_runner(model, cache_dir=cache_dir,
                                                            calibration=calibration))
    raise DeepfakeKDError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, batch norm) names of every BatchNorm2d that normalises the Conv2d registered
    just before it, as every Conv-BN(-Act) block in timm and in this package registers them;
    any other leaf module in between breaks the pair, so nothing else is folded."""
    pairs, conv = [], None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = (name, module)
        elif isinstance(module, nn.BatchNorm2d):
            if conv is not None and conv[1].out_channels == module.num_features \
                    and module.track_running_stats:
                pairs.append((conv[0], name))
            conv = None
        elif not any(True for _ in module.children()):
            conv = None
    return pairs


@torch.no_grad()
def fold_batchnorm(model: FaceClassifier) -> FaceClassifier:
    """A copy of `model` (eval mode) with each batch norm of `batchnorm_pairs` folded into its
    convolution: w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta, the
    norm replaced by what came after it (timm's BatchNormAct2d: dropout, activation). Parameters
    outside the folded pairs are shared with `model`, not copied (the teacher's transformer is
    most of its 376 MB)."""
    pairs = batchnorm_pairs(model)
    changed = {id(t) for names in pairs for name in names
               for t in model.get_submodule(name).state_dict(keep_vars=True).values()}
    shared = {id(t): t for t in model.state_dict(keep_vars=True).values() if id(t) not in changed}
    folded = copy.deepcopy(model.eval(), memo=shared)
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) \
            / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias if norm.affine else torch.zeros_like(scale)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + shift, requires_grad=False)
        after = nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) \
            else nn.Identity()
        parent, _, leaf = norm_name.rpartition(".")
        setattr(folded.get_submodule(parent), leaf, after)
    return folded


def example_input(model: FaceClassifier, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3, model.input_size, model.input_size)


def jit_runner(model: FaceClassifier):
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the shape checks in forward
        traced = torch.jit.trace(model, example_input(model), check_trace=False)
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def run(x: torch.Tensor) -> torch.Tensor:
        return scripted(x)

    return run


def weights_key(model: FaceClassifier) -> str:
    """A digest of what the export depends on: class, configuration, weights, torch version."""
    digest = hashlib.sha256()
    digest.update(json.dumps([type(model).__name__, model.config, torch.__version__, ONNX_OPSET,
                              EXPORT_FORMAT], sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE)
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "deepfake-kd") / "onnx"


def export_onnx(model: FaceClassifier) -> bytes:
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input(model),), buffer, input_names=["x"],
                          output_names=["logit"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return buffer.getvalue()


def shared_tensors(model: FaceClassifier, proto) -> dict[str, tuple[str, bool]]:
    """Which initializers of the export are the model's own tensors: initializer name ->
    (state-dict key, transposed). torch exports `nn.Linear` as a MatMul on the weight transposed
    (folded into a new constant), so a weight matches as stored or as its transpose; constants
    the export computed (batch norms folded into convolutions) match nothing and stay in the
    file. Matched by content (SHA-256 of the bytes, shape and dtype), not by name."""
    import numpy as np
    from onnx import numpy_helper

    def digest(array) -> tuple:
        array = np.ascontiguousarray(array)
        return array.shape, array.dtype.str, hashlib.sha256(array.tobytes()).hexdigest()

    known: dict[tuple, tuple[str, bool]] = {}
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().numpy()
        if array.nbytes < EXTERNAL_MIN_BYTES:
            continue
        known.setdefault(digest(array), (key, False))
        if array.ndim == 2:
            known.setdefault(digest(array.T), (key, True))
    found = {}
    for initializer in proto.graph.initializer:
        array = numpy_helper.to_array(initializer)
        match = known.get(digest(array)) if array.nbytes >= EXTERNAL_MIN_BYTES else None
        if match is not None:
            found[initializer.name] = match
    return found


def save_export(model: FaceClassifier, data: bytes, path: Path) -> None:
    """The export `data` as `path` (the graph, with the `shared_tensors` map in its metadata)
    and `path` + ".data" (its initializers of EXTERNAL_MIN_BYTES or more), written in a
    staging folder and moved into place weights first: a reader that finds `path` finds both."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SHARED_WEIGHTS, json.dumps(shared_tensors(model, proto))
    weights = path.with_name(f"{path.name}.data")
    staging = path.with_name(f".{path.name}.part{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=weights.name,
                                       size_threshold=EXTERNAL_MIN_BYTES)
        onnx.save_model(proto, str(staging / path.name))
        if (staging / weights.name).exists():  # not written when no initializer is as large
            os.replace(staging / weights.name, weights)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def share_weights(model: FaceClassifier, path: Path, ort) -> dict:
    """ONNX Runtime values (initializer name -> OrtValue) on the memory of `model`'s own
    tensors, for `SessionOptions.add_initializer`, which uses them in place: the weights are
    held once, not once by torch and again by ONNX Runtime. A transposed match is re-laid out
    once: the tensor's storage becomes the transpose, contiguous, and the tensor a transposed
    view of it (the same values; torch's matmul takes either layout). The values must outlive
    the session, and the model's weights must not change while it runs."""
    import numpy as np
    import onnx

    metadata = {entry.key: entry.value
                for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    values = {}
    for name, (key, transposed) in json.loads(metadata.get(SHARED_WEIGHTS, "{}")).items():
        tensor = tensors.get(key)
        if tensor is None or tensor.device.type != "cpu":
            continue  # ONNX Runtime reads this one from the weights file
        with torch.no_grad():
            array = tensor.detach().numpy()
            array = np.ascontiguousarray(array.T if transposed else array)  # no copy if laid out
            tensor.data = torch.from_numpy(array).t() if transposed else torch.from_numpy(array)
        values[name] = ort.OrtValue.ortvalue_from_numpy(array)
    return values


def quantize_int8(source: Path, target: Path, model: FaceClassifier, calibration) -> None:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations)."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self):
            batches = (np.asarray(calibration[i:i + 32])
                       for i in range(0, len(calibration), 32))
            self.batches = ({"x": model.preprocess(b).numpy()} for b in batches)

        def get_next(self):
            return next(self.batches, None)

    prepared = target.with_suffix(f".pre{os.getpid()}.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        with atomic_path(target) as partial:
            quantize_static(str(prepared), str(partial), Crops(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off: since 1.29 the Linux and macOS wheels
    upload usage events to Microsoft and write a device id (~/.cache/Microsoft) and a session
    file ($TMPDIR/.ses) unless ORT_DISABLE_TELEMETRY=1 is set before the import. A user who
    wants it sets ORT_DISABLE_TELEMETRY=0."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def onnx_runner(model: FaceClassifier, *, cache_dir: str | Path | None = None,
                calibration=None, share: bool = False):
    try:
        ort = import_onnxruntime()
    except ImportError:
        raise DeepfakeKDError("the onnx runtime needs ONNX Runtime: pip install onnxruntime onnx"
                              ) from None
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = folder / f"{type(model).__name__}-{weights_key(model)}.onnx"
    source: str | bytes = str(path)
    if not path.is_file():
        try:
            data = export_onnx(model)
        except Exception as exc:  # missing `onnx` package, unsupported operator
            raise DeepfakeKDError(f"cannot export {type(model).__name__} to ONNX ({exc}); "
                                  "pip install onnx, or use --runtime jit") from None
        try:
            save_export(model, data, path)
        except OSError as exc:  # a read-only home (some hosts): export again next start
            warnings.warn(f"cannot cache the ONNX export in {folder} ({exc}); set "
                          "DEEPFAKE_KD_CACHE to a writable folder to export only once", stacklevel=3)
            source = data
    if calibration is not None and isinstance(source, bytes):
        raise DeepfakeKDError(f"the onnx-int8 runtime needs a writable cache folder ({folder} "
                              "is not): set DEEPFAKE_KD_CACHE")
    if calibration is not None:
        import numpy as np

        crops = np.ascontiguousarray(calibration, dtype=np.uint8)
        digest = hashlib.sha256(crops.tobytes()).hexdigest()[:12]
        int8_path = path.with_name(f"{path.stem}-int8-{digest}.onnx")
        if not int8_path.is_file():
            quantize_int8(path, int8_path, model, crops)
        source = str(int8_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Spinning worker threads would take CPU from face detection and the other model.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory arena (ONNX Runtime's default) keeps the largest batch's activations for the
    # life of the session: the teacher's batch of 16 leaves +417 MB (32: +840 MB). Without it,
    # or shrinking it after every call, every call maps fresh memory: measured on the 2-core
    # Xeon, the teacher's batch of 16 took 19.6 instead of 13.3 ms per face, the student's
    # batch of 32 1.2 instead of 0.6 ms. `analysis.MODEL_BATCH` bounds what it keeps.
    # The memory pattern (also a default) plans each input shape's activations on its first
    # call and allocates them as one block on the second, beside the arena's chunks from the
    # first: off, the teacher's session after four batches (16, 16, 8, 16) held 785 instead of
    # 960 MB. The cost, one idle run on the 2-core Xeon (ONNX Runtime 1.32, ms per face): the
    # teacher's batch of 16 15.5 against 14.5, of 32 14.3 against 13.8; the student's batch of 32
    # 0.534 against 0.532, of 1 1.12 against 0.88.
    options.enable_mem_pattern = False
    shared = share_weights(model, path, ort) if share and source == str(path) else {}
    for name, value in shared.items():
        options.add_initializer(name, value)
    if shared:  # a packed copy of a shared weight would be a second copy again
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return OnnxRunner(session, shared)


class OnnxRunner:
    """An ONNX Runtime session as the function a model's forward calls; it holds the shared
    weights (`share_weights`) too, whose memory the session reads, for as long as it lives."""

    def __init__(self, session, shared_weights: dict):
        self.session, self.shared_weights = session, shared_weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.numpy()})[0])
