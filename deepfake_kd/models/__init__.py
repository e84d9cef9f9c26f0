"""Detector models: one interface (`base`), one file per architecture, the registry of names,
and weights on disk (`weights`). Nothing here knows which model plays which role."""

from .base import IMAGENET_MEAN, IMAGENET_STD, FaceClassifier, predict_crops
from .cross_efficient_vit import CrossEfficientViT
from .efficientnet_classifier import EfficientNetClassifier
from .registry import ARCHITECTURES, architecture, load_model, model_from_config, save_model
from .student_cnn import StudentCNN
from .tiny_efficientnet import TinyEfficientNet
from .trunk import EfficientNetTrunk
from .weights import load_weights, weights_folder

__all__ = [
    "FaceClassifier", "IMAGENET_MEAN", "IMAGENET_STD", "predict_crops", "CrossEfficientViT",
    "EfficientNetClassifier", "StudentCNN", "TinyEfficientNet", "EfficientNetTrunk",
    "ARCHITECTURES", "architecture", "load_model", "model_from_config", "save_model",
    "load_weights", "weights_folder",
]
