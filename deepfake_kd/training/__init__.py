"""Training: crop datasets and augmentation (data), DFDC crops (prepare_dfdc), the training loop
(train), distillation (distill), metrics and evaluation, cached backbone maps. Nothing in
pipeline/ or serving/ imports this package."""
