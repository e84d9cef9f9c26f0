"""Publishing to the Hub, checked offline: what would be uploaded, and refusals."""

import torch

from deepfake_kd.cli import main
from deepfake_kd.models import StudentCNN, save_model
from deepfake_kd.tools.publish import push


class RecordingApi:
    """Stands in for HfApi: records the calls a push makes, sends nothing."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "commit-url"


def test_push_uploads_config_weights_and_card_only(tmp_path):
    folder = save_model(StudentCNN(widths=(4, 8)), tmp_path / "m")
    (folder / "notes.txt").write_text("local notes")
    api = RecordingApi()
    assert push(folder, "someone/student", api=api) == "commit-url"
    (_, repo_id, create_kwargs), (_, upload) = api.calls
    assert repo_id == "someone/student" and create_kwargs["exist_ok"]
    assert upload["repo_id"] == "someone/student"
    assert set(upload["allow_patterns"]) == {"config.json", "model.safetensors", "README.md"}


def test_push_dry_run_lists_files_and_refuses_pickles(tmp_path, capsys):
    folder = save_model(StudentCNN(widths=(4, 8)), tmp_path / "m")
    assert main(["push", str(folder), "someone/student", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "would upload 3 files" in out
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert main(["push", str(folder), "someone/student", "--dry-run"]) == 2
    assert "refusing pickle" in capsys.readouterr().err


def test_export_to_fp16_keeps_predictions_close(tmp_path):
    from deepfake_kd.models import load_model

    torch.manual_seed(0)
    model = StudentCNN().eval()
    save_model(model, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "release"), "--fp16"]) == 0
    released = load_model(str(tmp_path / "release"))
    x = torch.randn(2, 3, 112, 112)
    assert next(released.parameters()).dtype == torch.float32
    assert torch.allclose(released(x), model(x), atol=1e-2)
    size = (tmp_path / "release" / "model.safetensors").stat().st_size
    assert size < 0.6 * (tmp_path / "run" / "model.safetensors").stat().st_size
