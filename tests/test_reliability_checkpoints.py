"""Checkpoint files are read with PyTorch's safe loader; full (code-executing) unpickling is opt-in."""

import argparse
import builtins
import logging

import pytest
import torch

from tools.checkpoints import TRUST_ENV, CheckpointError, read_checkpoint
from tools.gallery import main as gallery_main

from .research_checkpoints import make_checkpoint

SMALL = dict(vision_width=64, vision_layers=1, text_width=64, text_layers=1, embed_dim=32, patch=16,
             image_size=(64, 32), context=77)


def _training_state() -> tuple[dict, dict]:
    """A real optimizer state after a step and a real scheduler state (a Counter of milestones):
    what the research codebases save beside the weights."""
    layer = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-5)
    layer(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[20, 50], gamma=0.1)
    return opt.state_dict(), sched.state_dict()


@pytest.mark.parametrize("fmt", ["irra", "rde", "icl"])
def test_research_training_states_load_with_the_safe_loader(tmp_path, fmt, caplog, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path = make_checkpoint(tmp_path / fmt / "best.pth", fmt, seed=1, **SMALL)
    container = torch.load(path, weights_only=True)  # the test's own files are plain
    container["optimizer"], container["scheduler"] = _training_state()
    torch.save(container, path)
    with caplog.at_level(logging.WARNING):
        ckpt = read_checkpoint(path)
    assert ckpt.format == ("irra" if fmt == "irra" else "rde")
    assert "unpickling" not in caplog.text  # no fallback was needed


class _Payload:
    """A pickle that runs code when it is loaded (it creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_a_file_that_would_run_code_is_refused_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "code-ran"
    path = make_checkpoint(tmp_path / "evil" / "best.pth", "rde", seed=2, **SMALL)
    container = torch.load(path, weights_only=True)
    container["payload"] = _Payload(marker)
    torch.save(container, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert not marker.exists()  # never unpickled
    message = str(err.value)
    assert "refused" in message and f"{TRUST_ENV}=1" in message and "--trust-checkpoint" in message
    assert "\n" not in message
    # the CLIs say it in one line, before any image is read
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 16)).save(folder / "a.png")
    assert gallery_main(["--pretrained", str(path), "--data-dir", str(tmp_path / "db"), "index", str(folder)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and TRUST_ENV in lines[-1]
    assert not marker.exists()


def test_trusting_a_file_is_opt_in_and_warns(tmp_path, monkeypatch, caplog):
    path = make_checkpoint(tmp_path / "irra" / "best.pth", "irra", seed=3, **SMALL)
    container = torch.load(path, weights_only=True)
    container["args"] = argparse.Namespace(lr=1e-5, img_size=(384, 128))  # some codebases save their arguments
    torch.save(container, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(CheckpointError, match=r"refused: .*\(e\.g\. argparse\.Namespace\)"):
        read_checkpoint(path)
    monkeypatch.setenv(TRUST_ENV, "1")
    with caplog.at_level(logging.WARNING):
        ckpt = read_checkpoint(path)
    assert ckpt.format == "irra" and "load only files you trust" in caplog.text
