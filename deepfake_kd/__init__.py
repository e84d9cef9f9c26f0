"""deepfake-kd: a Cross Efficient ViT deepfake detector and a tiny student distilled from it."""

__version__ = "0.1.0"
