"""Fine-tune (or train from scratch) an open_clip model for text-to-image person retrieval.

The output folder is an open_clip ``local-dir`` model (``open_clip_config.json`` +
``open_clip_model.safetensors``, the weights with the best validation R1) plus ``state.pt`` (the
last finished epoch: model, optimiser, schedule; a killed run resumes from it), ``metrics.jsonl``
(one line per epoch) and ``train_config.json``.

The weights, ``state.pt`` and ``train_config.json`` are replaced atomically and ``metrics.jsonl`` is
rewritten from the state when a run starts, so a run killed at any point (``kill -9`` included) and
started again with the same command resumes after its last finished epoch, no epoch listed twice. Each epoch's randomness (batch
order, augmentation) is seeded by the seed and the epoch, so the resumed run ends with the weights
and ``metrics.jsonl`` (all but ``seconds``) of an uninterrupted run on the same machine and device
(``tests/test_reliability_resume.py``). ``state.pt`` is read with PyTorch's safe loader.

>>> summary = fit("synthpedes", "runs/small", TrainConfig(epochs=2), model="synthpedes-small", scratch=True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from data.readers import DatasetError, Record, read_dataset
from tools.embedder import EmbedderError, load_clip, pick_device, shipped_models, encode_text

from .losses import AttributeHeads, IdentityHead, identity_itc, negatives_itc, sdm
from .pairs import PairSet, augment, normalise

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training hyper-parameters (defaults: the shipped model's recipe)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.02
    sdm_weight: float = 1.0
    itc_weight: float = 1.0
    id_weight: float = 0.0
    #: weight of the image-to-text loss against hard negative captions (swapped colours...); 0 = off
    negative_weight: float = 0.0
    #: weight of the shared attribute heads on image and text features (labels parsed from the captions); 0 = off
    attribute_weight: float = 0.0
    #: share of people batched with their look-alikes (hard negatives in the batch); 0 = random batches
    similar_batches: float = 0.0
    #: target weight of a person's other photos against the caption's own photo (1 = IRRA's identity-aware
    #: targets, which train out what a caption says about its own photo only: place, action, bystanders)
    same_person_weight: float = 1.0
    max_logit_scale: float = 100.0
    #: initial 1/temperature for --scratch (open_clip's 1/0.07 learnt faster than IRRA's 1/0.02 in a 3-epoch A/B)
    init_logit_scale: float = 1 / 0.07
    #: RDA: loss = base(original) + w * base(reorganised), w = max(rda_min, rda_start - rda_decay * epoch)
    rda_start: float = 1.0
    rda_decay: float = 0.03
    rda_min: float = 0.1
    #: separate SynthPedes worlds whose attribute annotations pre-train the image tower (see train/pretrain.py);
    #: one path or a list of them
    pretrain_world: str | list[str] | None = None
    pretrain_epochs: int = 6
    #: epochs of text-tower pre-training on the same worlds' captions (what each states); 0 = none
    text_pretrain_epochs: int = 0
    #: more dataset folders (e.g. other SynthPedes worlds) whose train split joins contrastive training;
    #: their people are kept apart from the main dataset's (and each other's) even where ids coincide
    extra_world: str | list[str] | None = None
    seed: int = 0
    precision: str = "auto"  # auto (bf16 where the CPU/GPU has it), bf16, fp32
    val_split: str = "val"
    train_split: str = "train"
    save_dtype: str = "fp32"  # fp16 halves the weights file
    workers: int = 4
    extra: dict = field(default_factory=dict)

    def rda_weight(self, epoch: int) -> float:
        return max(self.rda_min, self.rda_start - self.rda_decay * epoch)


class TrainingError(RuntimeError):
    """Training cannot start (bad dataset, model or output folder)."""


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
            precision = "bf16" if supported else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"), precision


def build_model(model: str, init: str | None, scratch: bool, device: torch.device):
    """An architecture with random weights (``scratch``) or with weights from ``model``/``init``."""
    if scratch and init:
        raise TrainingError("--scratch and --init exclude each other")
    if not (scratch or init or model in shipped_models() or model.startswith("local-dir:")):
        raise TrainingError(f"model {model} has no weights: give --init TAG_OR_FILE (e.g. an IRRA/RDE/ICL best.pth) "
                            f"or --scratch to train from random weights")
    return load_clip(model, init, device, random_init=scratch)


def model_config(model: str) -> dict:
    """The open_clip_config.json to write beside trained weights."""
    import open_clip

    if model in shipped_models():
        return json.loads((shipped_models()[model] / "open_clip_config.json").read_text())
    if model.startswith("local-dir:"):
        return json.loads((Path(model[len("local-dir:"):]) / "open_clip_config.json").read_text())
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise TrainingError(f"unknown model {model!r}")
    return {"model_cfg": cfg, "preprocess_cfg": {"resize_mode": "squash", "interpolation": "bicubic"}}


def evaluate_split(model, pairs: PairSet, mean, std, device, batch_size: int = 256) -> dict:
    """R1/R5/R10 and mAP (percent) of text-to-image retrieval over a split (exact search)."""
    model.eval()
    with torch.inference_mode():
        img = []
        for i in range(0, len(pairs), batch_size):
            x = normalise(pairs.pixels[i:i + batch_size].permute(0, 3, 1, 2).float().div(255), mean, std)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            img.append(F.normalize(model.encode_image(x).float(), dim=-1))
        img_f = torch.cat(img)
        txt = []
        for i in range(0, len(pairs.tokens), batch_size):
            txt.append(F.normalize(encode_text(model, pairs.tokens[i:i + batch_size].to(device)).float(), dim=-1))
        txt_f = torch.cat(txt)
        sim = txt_f @ img_f.t()
    qp = torch.from_numpy(pairs.pids[pairs.caption_image])
    gp = torch.from_numpy(pairs.pids)
    order = sim.argsort(dim=1, descending=True).cpu()
    matches = gp[order] == qp[:, None]
    first = matches.float().argmax(1)
    out = {f"R{k}": float((first < k).float().mean() * 100) for k in (1, 5, 10)}
    cum = matches.cumsum(1).float()
    ranks = torch.arange(1, matches.shape[1] + 1).float()
    ap = ((cum / ranks) * matches).sum(1) / matches.sum(1).clamp(min=1)
    out["mAP"] = float(ap.mean() * 100)
    model.train()
    return out


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _same_run(saved: dict | None, identity: dict) -> bool:
    """Whether a folder's saved run identity is this run's (loader threads change nothing learned)."""
    if saved is None:
        return False

    defaults = asdict(TrainConfig())

    def learned(d: dict) -> dict:
        # settings added after a run was saved are absent from it, which is the same as their default
        cfg = {**{k: v for k, v in defaults.items() if k not in d.get("config", {})}, **d.get("config", {})}
        return {**d, "config": {k: v for k, v in cfg.items() if k != "workers"}}

    return learned(saved) == learned(identity)


def _extra_worlds(worlds: str | list[str] | None) -> list[tuple[str, str | None]]:
    """Each ``DIR`` or ``DIR=ANNOTATIONS`` (e.g. an RDA output for that world) -> (DIR, ANNOTATIONS)."""
    specs = [worlds] if isinstance(worlds, str) else list(worlds or [])
    return [(world, annotations if sep else None) for world, sep, annotations in (s.partition("=") for s in specs)]


def extra_train_records(worlds: str | list[str] | None, split: str, dataset_dir: str | Path,
                        first_pid: int, skip_missing: bool = False) -> list[Record]:
    """The ``split`` records of each extra world (``DIR`` or ``DIR=ANNOTATIONS``), with person ids
    moved past ``first_pid`` (and past each earlier world's) so that no two worlds share a person."""
    out: list[Record] = []
    next_pid = first_pid
    for world, annotations in _extra_worlds(worlds):
        if Path(world).resolve() == Path(dataset_dir).resolve():
            raise TrainingError(f"{world}: an extra world must not be the dataset being trained on")
        try:
            records = read_dataset(world, "auto", annotation_file=annotations, skip_missing=skip_missing,
                                   splits=[split]).split(split)
        except DatasetError as e:
            raise TrainingError(f"extra world: {e}") from None
        if not records:
            raise TrainingError(f"{world}: no records in split {split!r} to add to training")
        base = next_pid - min(r.pid for r in records)
        out.extend(replace(r, pid=r.pid + base) for r in records)
        next_pid = max(r.pid for r in out) + 1
        log.info("extra world %s: %d images", world, len(records))
    return out


def fit(dataset_dir: str | Path, out: str | Path, cfg: TrainConfig = TrainConfig(), model: str = "synthpedes-small",
        init: str | None = None, scratch: bool = False, format: str = "auto", device: str | None = None,
        annotation_file: str | Path | None = None, progress: bool = True, restart: bool = False,
        skip_missing: bool = False) -> dict:
    """Train and return a summary (best validation metrics, epochs, seconds).

    Only the train and validation splits are read: images missing from other splits do not matter;
    missing ones in these raise :class:`DatasetError` unless ``skip_missing`` (then left out, with a
    warning)."""
    out = Path(out)
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    dataset = read_dataset(dataset_dir, format, annotation_file=annotation_file, skip_missing=skip_missing,
                           splits=[cfg.train_split, cfg.val_split])
    train_records = dataset.split(cfg.train_split)
    if not train_records:
        raise TrainingError(f"{dataset_dir}: no records in split {cfg.train_split!r} (splits: {', '.join(dataset.all_splits)})")
    val_records = dataset.split(cfg.val_split)
    train_records = list(train_records) + extra_train_records(
        cfg.extra_world, cfg.train_split, dataset_dir, max(r.pid for r in dataset.records) + 1, skip_missing)

    run_identity = {"dataset": str(Path(dataset_dir).resolve()), "format": dataset.format, "model": model,
                    "init": init, "scratch": scratch, "annotation_file": str(annotation_file) if annotation_file else None,
                    "config": asdict(cfg)}
    if annotation_file:
        # the same path with other contents (RDA re-run with another MLLM) is another run
        run_identity["annotation_sha256"] = hashlib.sha256(Path(annotation_file).read_bytes()).hexdigest()
    extra_annotations = [a for _, a in _extra_worlds(cfg.extra_world) if a]
    if extra_annotations:
        run_identity["extra_annotation_sha256"] = [hashlib.sha256(Path(a).read_bytes()).hexdigest()
                                                   for a in extra_annotations]
    state_path = out / "state.pt"
    out.mkdir(parents=True, exist_ok=True)
    if state_path.exists() and not restart:
        saved = json.loads((out / "train_config.json").read_text()) if (out / "train_config.json").exists() else None
        if not _same_run(saved, run_identity):
            raise TrainingError(f"{out} holds a different training run; choose another --out or pass --restart")
    elif restart:
        for name in ("state.pt", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)

    try:
        loaded = build_model(model, init, scratch, dev)
    except EmbedderError as e:
        raise TrainingError(str(e)) from None
    clip = loaded.model.to(dev).train()
    # convolutions run about 20% faster channels-last on CPU (oneDNN); the weights saved are the same values
    clip.visual.to(memory_format=torch.channels_last)
    if scratch:
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(cfg.init_logit_scale))
    log.info("model %s: %.1fM parameters, input %s", model, sum(p.numel() for p in clip.parameters()) / 1e6,
             loaded.image_size)
    train = PairSet(train_records, loaded.image_size, loaded.tokenizer, cfg.workers, progress, loaded.resample)
    val = PairSet(val_records, loaded.image_size, loaded.tokenizer, cfg.workers, progress, loaded.resample) \
        if val_records else None

    with torch.no_grad():
        dim = int(clip.encode_text(train.tokens[:1].to(dev)).shape[-1])
    head = IdentityHead(dim, train.num_ids).to(dev) if cfg.id_weight > 0 else None
    attr_heads = None
    if cfg.attribute_weight > 0:
        from tools.attributes import SLOTS

        attr_heads = AttributeHeads(dim, [len(SLOTS[s].values) for s in SLOTS]).to(dev)
        train.caption_attributes()  # parse every caption once, before the clock of epoch 1
    params = list(clip.parameters()) + (list(head.parameters()) if head else []) + \
        (list(attr_heads.parameters()) if attr_heads else [])
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    start_epoch, best, history, elapsed = 0, None, [], 0.0
    pretrain_report = None
    if state_path.exists():
        # the state is tensors and plain values only: the safe loader reads it (and a file swapped
        # in by someone else cannot run code)
        try:
            state = torch.load(state_path, map_location=dev, weights_only=True)
        except Exception as e:  # torch raises pickle, zip and runtime errors alike
            raise TrainingError(f"{state_path}: cannot be read to resume ({str(e).splitlines()[0][:200]}); pass "
                                f"--restart to start over") from None
        clip.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if head is not None and state.get("head"):
            head.load_state_dict(state["head"])
        if attr_heads is not None and state.get("attr_heads"):
            attr_heads.load_state_dict(state["attr_heads"])
        start_epoch, best, history, elapsed = state["epoch"] + 1, state["best"], state["history"], state["seconds"]
        pretrain_report = state.get("pretrain")
        log.info("resuming %s after epoch %d", out, state["epoch"] + 1)
    # metrics.jsonl holds exactly the epochs the state holds: a kill between appending an epoch's line
    # and saving its state leaves a line for an epoch that is done again
    _atomic_write(out / "metrics.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in history)))
    _atomic_write(out / "train_config.json", lambda p: p.write_text(json.dumps(run_identity, indent=2)))
    config_json = loaded.config or model_config(model)  # a research checkpoint's own shapes where --init is one
    autocast, precision = _autocast(dev, cfg.precision)
    log.info("precision %s on %s", precision, dev)
    if cfg.pretrain_world and not state_path.exists():
        from .pretrain import pretrain_visual

        try:
            pretrain_report = pretrain_visual(clip.visual, cfg.pretrain_world, loaded.image_size, loaded.mean,
                                              loaded.std, cfg.pretrain_epochs, cfg.batch_size, seed=cfg.seed,
                                              device=dev, autocast=autocast, progress=progress, workers=cfg.workers,
                                              forbidden=dataset_dir)
        except (ValueError, OSError) as e:  # AnnotationError is a ValueError
            raise TrainingError(f"attribute pre-training: {str(e).splitlines()[0]}") from None
        elapsed += pretrain_report["seconds"]
        if cfg.text_pretrain_epochs > 0:
            from .pretrain import pretrain_text

            try:
                text_report = pretrain_text(clip, cfg.pretrain_world, loaded.tokenizer, cfg.text_pretrain_epochs,
                                            cfg.batch_size, seed=cfg.seed, device=dev, autocast=autocast,
                                            progress=progress, forbidden=dataset_dir)
            except (ValueError, OSError) as e:
                raise TrainingError(f"text pre-training: {str(e).splitlines()[0]}") from None
            elapsed += text_report["seconds"]
            pretrain_report = {**pretrain_report, "text": text_report}
        clip.train()
        _atomic_write(state_path, lambda p: torch.save({
            "model": clip.state_dict(), "optimizer": opt.state_dict(), "head": None, "attr_heads": None,
            "epoch": -1, "best": None, "history": [], "seconds": elapsed, "pretrain": pretrain_report}, p))

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        losses = []
        batches = train.batches(cfg.batch_size, rng, similar=cfg.similar_batches, hard_negatives=cfg.negative_weight > 0,
                                attributes=attr_heads is not None)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not progress, mininterval=2.0)
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, cfg)
            x = normalise(augment(batch.pixels, gen), loaded.mean, loaded.std).to(dev) \
                .contiguous(memory_format=torch.channels_last)
            pids = batch.pids.to(dev)
            with autocast:
                img = F.normalize(clip.encode_image(x).float(), dim=-1)
                scale = clip.logit_scale.exp().clamp(max=cfg.max_logit_scale)

                def base_loss(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    txt = F.normalize(encode_text(clip, tokens.to(dev)).float(), dim=-1)
                    w = cfg.same_person_weight
                    value = (cfg.sdm_weight * sdm(img, txt, pids, scale, w)
                             + cfg.itc_weight * identity_itc(img, txt, pids, scale, w))
                    if head is not None:
                        value = value + cfg.id_weight * head(img, txt, batch.labels.to(dev))
                    return value, txt

                loss, txt = base_loss(batch.tokens)
                if attr_heads is not None:
                    loss = loss + cfg.attribute_weight * (attr_heads(img, batch.image_attrs.to(dev))
                                                          + attr_heads(txt, batch.text_attrs.to(dev))) / 2
                if batch.neg_tokens is not None:
                    neg = F.normalize(encode_text(clip, batch.neg_tokens.to(dev)).float(), dim=-1)
                    loss = loss + cfg.negative_weight * negatives_itc(img, txt, neg, pids, scale)
                if batch.rda_tokens is not None:
                    loss = loss + cfg.rda_weight(epoch) * base_loss(batch.rda_tokens)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(max=math.log(cfg.max_logit_scale))
            losses.append(float(loss.detach()))
            if i % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", scale=f"{float(scale.detach()):.1f}")
        bar.close()
        seconds = time.perf_counter() - t0
        elapsed += seconds
        record = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)) if losses else float("nan"), 4),
                  "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 1)}
        if val is not None:
            record["val"] = {k: round(v, 2) for k, v in evaluate_split(clip, val, loaded.mean, loaded.std, dev).items()}
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, record)
        improved = val is None or best is None or record["val"]["R1"] >= best["val"]["R1"]
        if improved:
            best = record
            weights = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
            if cfg.save_dtype == "fp16":
                weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
            _atomic_write(out / "open_clip_model.safetensors", lambda p: save_file(weights, str(p)))
            _atomic_write(out / "open_clip_config.json", lambda p: p.write_text(json.dumps(config_json, indent=2)))
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        _atomic_write(state_path, lambda p: torch.save({
            "model": clip.state_dict(), "optimizer": opt.state_dict(), "head": head.state_dict() if head else None,
            "attr_heads": attr_heads.state_dict() if attr_heads else None,
            "epoch": epoch, "best": best, "history": history, "seconds": elapsed, "pretrain": pretrain_report}, p))
    return {"out": str(out), "epochs": cfg.epochs, "best": best, "seconds": round(elapsed, 1), "precision": precision,
            "train_images": len(train), "train_ids": train.num_ids,
            "pretrain": {k: v for k, v in (pretrain_report or {}).items() if k != "history"} or None}
