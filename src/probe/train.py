"""Training: several learning-rate / weight-decay candidates on the same batches, the state
saved atomically after every epoch, so a killed run resumes and ends with the same weights.
Evaluation averages the views' class probabilities per clip, as the original multi-view
evaluation does."""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from src.errors import UsageError
from src.features import save_object
from src.models.attentive_pooler import AttentiveClassifier
from src.probe.data import Clip, ViewDataset, clip_views, collate_views
from src.probe.model import ProbeConfig, build_probe, forward_batch

logger = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-3, 3e-4, 1e-4)
    weight_decays: tuple[float, ...] = (0.01, 0.1)
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.0
    patience: int = 5
    class_weights: str = "balanced"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self):
        bad = [f"--lr {v}" for v in self.lrs if not (math.isfinite(v) and v > 0)]
        bad += [f"--weight_decay {v}" for v in self.weight_decays if not (math.isfinite(v) and v >= 0)]
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            bad.append(f"--warmup_epochs {self.warmup_epochs}")
        if not (math.isfinite(self.final_lr_ratio) and 0 <= self.final_lr_ratio <= 1):
            bad.append(f"final_lr_ratio {self.final_lr_ratio}")
        if self.patience < 0 or self.num_workers < 0:
            bad.append(f"--patience {self.patience}" if self.patience < 0 else f"--num_workers {self.num_workers}")
        if bad:
            raise UsageError(f"{', '.join(bad)}: learning rates must be positive numbers, weight decays and "
                             "--warmup_epochs finite and >= 0, --patience and --num_workers >= 0")

    def candidates(self) -> list[tuple[float, float]]:
        return list(itertools.product(self.lrs, self.weight_decays))


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_ratio: float) -> float:
    """Linear warm-up from 0, then cosine from `base_lr` to `final_ratio * base_lr`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    floor = final_ratio * base_lr
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def class_weight_tensor(labels: list[int], num_classes: int, mode: str) -> torch.Tensor | None:
    """'balanced': n / (C · n_c) per class (classes rare in training weigh more); 'none': None."""
    if mode == "none":
        return None
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros(()))


def _make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "query_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "query_tokens" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


@dataclass
class Candidate:
    lr: float
    weight_decay: float
    model: AttentiveClassifier
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


@dataclass
class TrainState:
    """What a resumed run needs; saved after every epoch."""

    epoch: int = 0
    best: dict = field(default_factory=dict)  # top1, loss, epoch, candidate, state_dict
    history: list = field(default_factory=list)


def evaluate_clips(models: list[nn.Module], loader: DataLoader, num_clips: int, num_classes: int,
                   device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per model, clip probabilities `[num_clips, C]`: softmax over all classes per view, averaged
    over each clip's views."""
    sums = [torch.zeros(num_clips, num_classes, dtype=torch.float64) for _ in models]
    counts = torch.zeros(num_clips, dtype=torch.float64)
    for model in models:
        model.eval()
    with torch.inference_mode(), _autocast(device, dtype):
        for batch, _, clip in loader:
            batch = _to(batch, device)
            for total, model in zip(sums, models):
                probs = forward_batch(model, batch).float().softmax(-1).cpu().double()
                total.index_add_(0, clip, probs)
            counts.index_add_(0, clip, torch.ones(len(clip), dtype=torch.float64))
    return [(total / counts.clamp(min=1).unsqueeze(1)).float() for total in sums]


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return [f.to(device, non_blocking=True) for f in batch]


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def clip_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log of the averaged probability of the true class."""
    return float(-probs[torch.arange(len(labels)), labels].clamp(min=1e-12).log().mean())


def epoch_order(num_views: int, seed: int, epoch: int) -> list[int]:
    """The shuffled view order of one epoch: from (seed, epoch) alone, so a resumed run repeats it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_views, generator=generator).tolist()


class ProbeTrainer:
    """Trains the candidates together on `train`, picks the best on `val` (clip top-1, then loss).

    `state_path` holds the state after each finished epoch; an existing one with the same
    `fingerprint` is resumed.
    """

    def __init__(self, config: ProbeConfig, settings: TrainSettings, train: list[Clip], val: list[Clip],
                 device: torch.device, dtype: torch.dtype, state_path: Path, fingerprint: dict):
        self.config, self.settings, self.device, self.dtype = config, settings, device, dtype
        self.train_views, self.val_clips = clip_views(train), val
        self.state_path, self.fingerprint = state_path, fingerprint
        torch.manual_seed(settings.seed)  # same initial weights for every run with this seed
        self.candidates = []
        for lr, wd in settings.candidates():
            model = build_probe(config).to(device)
            self.candidates.append(Candidate(lr, wd, model, _make_optimizer(model, lr, wd),
                                             torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)))
        weights = class_weight_tensor([v[1] for v in self.train_views], config.num_classes, settings.class_weights)
        self.loss_weights = None if weights is None else weights.to(device)
        self.state = TrainState()
        self.steps_per_epoch = math.ceil(len(self.train_views) / settings.batch_size)
        self.val_loader = DataLoader(ViewDataset(clip_views(val)), batch_size=settings.batch_size,
                                     num_workers=settings.num_workers, collate_fn=collate_views,
                                     pin_memory=device.type == "cuda")

    # -- persistence
    def resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        saved = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != self.fingerprint:
            raise UsageError(f"{self.state_path}: an unfinished training run with other labels, features or "
                             "settings; use another --output_dir or pass --overwrite")
        for candidate, stored in zip(self.candidates, saved["candidates"]):
            candidate.model.load_state_dict(stored["model"])
            candidate.optimizer.load_state_dict(stored["optimizer"])
            candidate.scaler.load_state_dict(stored["scaler"])
        self.state = TrainState(saved["epoch"], saved["best"], saved["history"])
        logger.info("resuming from %s after epoch %d of %d", self.state_path, self.state.epoch, self.settings.epochs)
        return True

    def _save_state(self) -> None:
        save_object({
            "fingerprint": self.fingerprint,
            "epoch": self.state.epoch,
            "best": self.state.best,
            "history": self.state.history,
            "candidates": [{"model": c.model.state_dict(), "optimizer": c.optimizer.state_dict(),
                            "scaler": c.scaler.state_dict()} for c in self.candidates],
        }, self.state_path)

    # -- the loop
    def run(self, progress: bool | None = None) -> TrainState:
        from tqdm import tqdm

        s = self.settings
        while self.state.epoch < s.epochs and not self._stopped_early():
            epoch = self.state.epoch
            order = epoch_order(len(self.train_views), s.seed, epoch)
            dataset = ViewDataset(self.train_views)
            loader = DataLoader(dataset, batch_sampler=[order[i:i + s.batch_size] for i in range(0, len(order), s.batch_size)],
                                num_workers=s.num_workers, collate_fn=collate_views, pin_memory=self.device.type == "cuda")
            losses = [0.0] * len(self.candidates)
            for c in self.candidates:
                c.model.train()
            with tqdm(total=len(order), desc=f"epoch {epoch + 1}/{s.epochs}", unit="view", disable=progress,
                      leave=False) as bar:
                for step, (batch, labels, _) in enumerate(loader):
                    batch, labels = _to(batch, self.device), labels.to(self.device)
                    global_step = epoch * self.steps_per_epoch + step
                    for k, c in enumerate(self.candidates):
                        losses[k] += self._step(c, batch, labels, global_step) * len(labels)
                    bar.update(len(labels))
            self._end_epoch(epoch, [loss / len(order) for loss in losses])
        return self.state

    def _step(self, c: Candidate, batch, labels: torch.Tensor, global_step: int) -> float:
        s = self.settings
        lr = lr_at(global_step, s.epochs * self.steps_per_epoch, round(s.warmup_epochs * self.steps_per_epoch),
                   c.lr, s.final_lr_ratio)
        for group in c.optimizer.param_groups:
            group["lr"] = lr
        with _autocast(self.device, self.dtype):
            logits = forward_batch(c.model, batch)
        loss = F.cross_entropy(logits.float(), labels, weight=self.loss_weights)
        c.optimizer.zero_grad(set_to_none=True)
        c.scaler.scale(loss).backward()
        c.scaler.step(c.optimizer)
        c.scaler.update()
        return float(loss.detach())

    def _end_epoch(self, epoch: int, train_losses: list[float]) -> None:
        labels = torch.tensor([c.label for c in self.val_clips])
        probs = evaluate_clips([c.model for c in self.candidates], self.val_loader, len(self.val_clips),
                               self.config.num_classes, self.device, self.dtype)
        results = []
        for k, (c, p) in enumerate(zip(self.candidates, probs)):
            top1 = float((p.argmax(-1) == labels).float().mean())
            results.append({"candidate": k, "lr": c.lr, "weight_decay": c.weight_decay, "train_loss": train_losses[k],
                            "val_top1": top1, "val_loss": clip_loss(p, labels)})
        best_now = max(results, key=lambda r: (r["val_top1"], -r["val_loss"]))
        best = self.state.best
        if not best or (best_now["val_top1"], -best_now["val_loss"]) > (best["val_top1"], -best["val_loss"]):
            model = self.candidates[best_now["candidate"]].model
            self.state.best = {**best_now, "epoch": epoch + 1,
                               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        self.state.history.append({"epoch": epoch + 1, "candidates": results})
        self.state.epoch = epoch + 1
        logger.info("epoch %d/%d: best candidate lr %g wd %g, val top-1 %.3f (loss %.3f); best so far %.3f (epoch %d)",
                    epoch + 1, self.settings.epochs, best_now["lr"], best_now["weight_decay"], best_now["val_top1"],
                    best_now["val_loss"], self.state.best["val_top1"], self.state.best["epoch"])
        self._save_state()

    def _stopped_early(self) -> bool:
        best = self.state.best
        if best and self.settings.patience > 0 and self.state.epoch - best["epoch"] >= self.settings.patience:
            logger.info("early stop after epoch %d: no better validation top-1 for %d epochs",
                        self.state.epoch, self.settings.patience)
            return True
        return False

