"""The commands of `python -m deepfake_kd` (and `deepfake-kd`), over the layers below: analyze,
bench, loadtest, export and push (publish), and the training commands prepare-dfdc,
train-teacher, distill and evaluate. Each module registers its commands with `add_cli`."""
