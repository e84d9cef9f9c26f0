"""Detector models: the Cross Efficient ViT teacher, the student, and how to load either."""

from ..errors import ModelNotFoundError, WeightsError
from .base import FaceClassifier, load_weights
from .cross_efficient_vit import CrossEfficientViT
from .efficientnet_classifier import EfficientNetClassifier
from .hub import MODEL_CLASSES, default_reference, load_model, save_model, weights_folder
from .student import StudentCNN
from .tiny_efficientnet import TinyEfficientNet

__all__ = [
    "FaceClassifier", "WeightsError", "load_weights", "CrossEfficientViT", "StudentCNN",
    "TinyEfficientNet", "EfficientNetClassifier",
    "MODEL_CLASSES", "ModelNotFoundError", "default_reference", "load_model", "save_model",
    "weights_folder",
]
