"""Tiny randomly initialised models for tests (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_CFG = {
    "embed_dim": 32,
    "custom_text": True,
    "vision_cfg": {"image_size": [64, 32], "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "resize_mode": "squash"}


def tiny_arch(tmp: Path, name: str = "tiny-test-clip") -> str:
    """Register a tiny architecture with open_clip under ``name``."""
    import open_clip

    if name not in open_clip.list_models():
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(TINY_CFG))
        open_clip.add_model_config(path)
    return name


def tiny_model_dir(tmp: Path, seed: int = 0) -> Path:
    """A local-dir model folder (open_clip_config.json + safetensors) with random weights."""
    import open_clip

    torch.manual_seed(seed)
    folder = Path(tmp) / f"tiny-model-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    model = open_clip.model.CustomTextCLIP(**{k: v for k, v in TINY_CFG.items() if k != "custom_text"})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS}))
    return folder


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound to port 0 and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def chroma_server(path: Path):
    """A Chroma server (``chroma run``, installed with chromadb) on 127.0.0.1, storing under
    ``path``; yields its URL and stops it on exit."""
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = free_port()
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("chroma server exited at start") from None
                if time.time() > deadline:
                    raise RuntimeError("chroma server did not start in 60 s") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
