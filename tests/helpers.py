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
def server_process(cmd: list[str], url: str, health: str, name: str, timeout: float, log_path: Path | None = None,
                   **popen):
    """Run ``cmd`` (a server listening at ``url``) until ``url + health`` answers 200 within
    ``timeout`` seconds; yield ``url``; stop the process on exit. Output goes to ``log_path`` (its
    tail is in the error when the process exits at start) or nowhere."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = f": {log_path.read_text()[-2000:]}" if log_path else ""
                raise RuntimeError(f"{name} exited at start ({proc.returncode}){tail}")
            try:
                with urllib.request.urlopen(url + health, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start within {timeout:g} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


@contextmanager
def chroma_server(path: Path):
    """A Chroma server (``chroma run``, installed with chromadb) on 127.0.0.1, storing under
    ``path``; yields its URL and stops it on exit."""
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = free_port()
    with server_process([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                        f"http://127.0.0.1:{port}", "/api/v2/heartbeat", "chroma server", 60) as url:
        yield url
