"""The one training loop: outer minimisation over an interchangeable adversary.

Data stays on the device as uint8 and is sliced per batch (no DataLoader). Batch
order comes from (seed, epoch), adversary noise from a generator whose state is
checkpointed, and schedules are pure functions of the step counter, so a run
killed at any point and resumed ends with bit-identical weights on CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..attacks import pgd
from ..attacks.core import eval_mode
from ..data import canonical_name, epoch_permutation, load_dataset, random_crop_flip
from ..errors import RobustOptError
from ..modelfile import read_model_file, weights_sha256
from ..models import DATASET_STATS, build_model, model_arguments
from ..rundir import RunDir
from ..threat import make_threat
from ..validate import forward_checked
from . import state as train_state
from .adversary import adversarial_batch, search_model, training_loss
from .config import TrainConfig
from .ema import WeightAverage
from .schedule import epsilon, learning_rate

Progress = Callable[[str, dict], None]


def _silent(kind: str, info: dict) -> None:
    pass


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict]
    stopped: str  # "completed" | "overfitting" | "nan"
    default_weights: str  # what load_model(run_dir) returns: "best" or "last"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RobustOptError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustOptError("device cuda requested but no GPU is available: use --device cpu")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise RobustOptError(f"device {name} does not exist: this machine has "
                             f"{torch.cuda.device_count()} GPU(s), cuda:0 upwards")
    return device


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _model_info(cfg: TrainConfig, model: nn.Module, shape: tuple, classes: tuple) -> dict:
    return {"dataset": cfg.dataset, "input_shape": list(shape), "classes": list(classes),
            "threat": make_threat(cfg.norm, cfg.eps).to_dict()}


def heldout_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                  epoch: int, autocast: torch.dtype | None) -> dict:
    """Clean and PGD accuracy and the PGD robust loss on the fixed held-out batch."""
    if x.shape[0] == 0:
        return {}
    gen = torch.Generator(x.device).manual_seed(cfg.seed * 1_000_003 + epoch)
    threat = make_threat(cfg.norm, cfg.eps)
    with torch.no_grad(), eval_mode(model):
        clean = (model(x).argmax(1) == y).float().mean().item()
    res = pgd(model, x, y, threat, steps=cfg.eval_steps, loss="ce", generator=gen,
              autocast=autocast)
    return {"heldout_clean_acc": clean, "heldout_pgd_acc": res.accuracy,
            "heldout_robust_loss": float(res.loss.mean())}


class _Trainer:
    """State of one run while it trains; `train()` is the public entry point.

    Built before its run directory is (``run=None``, attached later), so a config that
    cannot train fails before anything on disk is created or replaced.
    """

    def __init__(self, cfg: TrainConfig, run: RunDir | None, progress: Progress) -> None:
        self.cfg, self.run, self.progress = cfg, run, progress
        self.device = pick_device(cfg.device)
        self.autocast = torch.bfloat16 if cfg.precision == "bf16" else None
        data = load_dataset(cfg.dataset, "train", cfg.data_dir)
        images = torch.from_numpy(data.images)
        labels = torch.from_numpy(data.labels)
        n = images.shape[0] if cfg.train_n is None else min(cfg.train_n, images.shape[0])
        hold = min(cfg.heldout_n, max(n - 1, 0))
        self.x_train = images[: n - hold].to(self.device)
        self.y_train = labels[: n - hold].to(self.device)
        self.x_hold = (images[n - hold: n].float() / 255).to(self.device)
        self.y_hold = labels[n - hold: n].to(self.device)
        self.info = _model_info(cfg, None, tuple(data.images.shape[1:]), data.classes)
        stats = DATASET_STATS.get(canonical_name(cfg.dataset))
        mean, std = stats if stats is not None else _stats(images)
        # CPU-only seed: the weights are initialised on the CPU and then moved; train()
        # forks the global RNG, so the caller's random state is left as it was
        torch.random.default_generator.manual_seed(cfg.seed)
        kwargs = dict(cfg.model_kwargs)
        side = data.images.shape[-1]
        if "input_size" in model_arguments(cfg.model) and data.images.shape[-2] == side:
            kwargs.setdefault("input_size", side)  # size the model to the data
        self.model = build_model(cfg.model, mean=mean, std=std,
                                 num_classes=len(data.classes), **kwargs)
        self.model = self.model.to(self.device)
        with torch.no_grad(), eval_mode(self.model):  # eval: no BatchNorm statistic moves
            forward_checked(self.model, self.x_train[:1].float() / 255)
        if self.autocast is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.search = search_model(cfg, self.model)  # shares the model's weights
        self.optimizer = _make_optimizer(cfg, self.model)
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.best_weights: dict[str, torch.Tensor] | None = None  # also in each checkpoint
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        self.steps_per_epoch = math.ceil(self.x_train.shape[0] / cfg.batch_size)
        self.counters = {"epoch": 0, "step": 0, "sums": [0.0, 0.0, 0.0],
                         "best_acc": -1.0, "best_epoch": -1, "history": [], "elapsed": 0.0,
                         "run_time": 0.0, "stopped": None}
        self._mark = time.monotonic()

    @property
    def averaged(self) -> nn.Module | None:
        """The weight average, if the run keeps one."""
        return None if self.average is None else self.average.model

    @property
    def product(self) -> nn.Module:
        """The weights the run checks, selects and saves: the average when there is one."""
        return self.model if self.average is None else self.average.model

    # -- checkpointing ---------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self._tick()  # (the write itself is counted in the next interval)
        tensors, state = train_state.pack(self.model, self.optimizer, self.generator,
                                          self.counters, self.averaged, self.best_weights)
        self.run.write_checkpoint(tensors, state)

    def _tick(self) -> None:
        """Add the wall time since the last tick to the run's total (steps, held-out checks,
        checkpoints and weight files alike; a resumed run adds only its own time)."""
        now = time.monotonic()
        self.counters["run_time"] = self.counters.get("run_time", 0.0) + now - self._mark
        self._mark = now

    def restore(self) -> None:
        tensors, state = self.run.read_checkpoint()
        try:
            self.counters = train_state.unpack(tensors, state, self.model, self.optimizer,
                                               self.generator, self.averaged)
            self.best_weights = train_state.best_weights(tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise RobustOptError(
                f"the checkpoint in {self.run.path} does not fit its config.json ({first}): "
                "the config was edited after the run started, or the run was started on "
                "another kind of device; restore the config or start over with --force"
            ) from None
        self._sync_best_file()
        self.run.write_metrics(self.counters["history"])

    def _sync_best_file(self) -> None:
        """Make best.safetensors the best weights the checkpoint knows of.

        A kill between an epoch's weight files and its checkpoint leaves best.safetensors
        one epoch ahead of the counters. On CPU the replayed epoch rewrites the same bytes;
        on a GPU the replay can differ and might not be a new best, so the file is put back
        from the checkpoint here rather than left naming weights no record describes.
        """
        if self.best_weights is None:
            return
        path = self.run.path / "best.safetensors"
        if path.is_file():
            try:
                _, on_disk = read_model_file(path)
                if weights_sha256(on_disk) == weights_sha256(self.best_weights):
                    return
            except RobustOptError:
                pass  # unreadable: rewrite it below
        module = copy.deepcopy(self.product)
        module.load_state_dict(self.best_weights)
        self.run.write_weights(module, "best",
                               {**self.info, "epoch": self.counters["best_epoch"]})

    # -- one optimisation step -------------------------------------------------------
    def step(self, epoch: int, i: int, perm: torch.Tensor) -> None:
        cfg = self.cfg
        idx = perm[i * cfg.batch_size: (i + 1) * cfg.batch_size]
        x = self.x_train[idx].float() / 255
        y = self.y_train[idx]
        if cfg.uses_augmentation:
            x = random_crop_flip(x, 4, self.generator)
        if self.autocast is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        progress = epoch + i / self.steps_per_epoch
        lr = learning_rate(cfg, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x_adv = adversarial_batch(cfg, self.model, x, y, epsilon(cfg, progress),
                                  self.generator, self.autocast, self.search)
        self.model.train()
        loss, logits = training_loss(cfg, self.model, x, x_adv, y, self.autocast)
        if not torch.isfinite(loss):
            raise _Diverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model, epoch * self.steps_per_epoch + i + 1)
        sums = self.counters["sums"]
        sums[0] += loss.item() * y.shape[0]
        sums[1] += (logits.argmax(1) == y).sum().item()
        sums[2] += y.shape[0]

    # -- epoch end ---------------------------------------------------------------------
    def end_epoch(self, epoch: int, epoch_time: float, examples: int) -> dict:
        cfg = self.cfg
        loss_sum, correct, count = self.counters["sums"]
        check = heldout_check(self.product, self.x_hold, self.y_hold, cfg, epoch,
                              self.autocast)
        self._tick()
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                  "train_robust_acc": correct / max(count, 1),
                  "lr": learning_rate(cfg, epoch + 1 - 1e-9),
                  "eps": epsilon(cfg, epoch + 1 - 1e-9),
                  **check,
                  "examples_per_s": examples / max(epoch_time, 1e-9),
                  "epoch_time_s": epoch_time,
                  "wall_time_s": self.counters["elapsed"],
                  "run_time_s": self.counters["run_time"]}
        # "best" = held-out PGD accuracy for adversarial training, clean accuracy for
        # standard training (its PGD accuracy is ~0 at every epoch); ties go to the later
        # epoch, so a run that never improves on robustness keeps its newest weights.
        key = "heldout_clean_acc" if cfg.adversary == "none" else "heldout_pgd_acc"
        acc = record.get(key, 0.0)
        # the surrogate adversaries (one step; smoothed gradients) can be learnt around:
        # trial best-smooth15's held-out PGD accuracy fell from 92% to 48% (docs/training.md)
        surrogate = cfg.adversary in ("fgsm", "fgsm-rs") or (
            cfg.attack_smooth > 0 and cfg.adversary != "none")
        collapsed = (cfg.overfit_guard and surrogate
                     and self.counters["best_acc"] > 0
                     and acc < self.counters["best_acc"] - 0.2)
        record["overfitting_detected"] = bool(collapsed)
        if not collapsed and acc >= self.counters["best_acc"]:
            self.counters["best_acc"], self.counters["best_epoch"] = acc, epoch + 1
            self.best_weights = {k: v.detach().clone()
                                 for k, v in self.product.state_dict().items()}
            self.run.write_weights(self.product, "best", {**self.info, "epoch": epoch + 1})
        # The digest pins the weights this epoch wrote, so a run kept without its weight
        # files can be retrained and checked bit for bit (``robustopt train --restore``).
        record["weights_sha256"] = self.run.write_weights(
            self.product, "last", {**self.info, "epoch": epoch + 1})
        self.counters["history"].append(record)
        self.counters["sums"] = [0.0, 0.0, 0.0]
        return record

    def fit(self) -> str:
        cfg = self.cfg
        self._mark = time.monotonic()
        last_save = time.monotonic()
        while self.counters["epoch"] < cfg.epochs and self.counters["stopped"] is None:
            epoch = self.counters["epoch"]
            perm = epoch_permutation(self.x_train.shape[0], cfg.seed, epoch, self.device)
            t_epoch, start_step = time.monotonic(), self.counters["step"]
            t_last = time.monotonic()
            for i in range(start_step, self.steps_per_epoch):
                self.step(epoch, i, perm)
                now = time.monotonic()
                self.counters["elapsed"] += now - t_last
                t_last = now
                self.counters["step"] = i + 1
                if i + 1 < self.steps_per_epoch and self._due(last_save, i + 1):
                    self.save_checkpoint()
                    last_save = time.monotonic()
                s = self.counters["sums"]
                self.progress("step", {"epoch": epoch + 1, "epochs": cfg.epochs, "step": i + 1,
                                       "steps": self.steps_per_epoch,
                                       "loss": s[0] / max(s[2], 1), "acc": s[1] / max(s[2], 1),
                                       "rate": s[2] / max(now - t_epoch, 1e-9)
                                       if start_step == 0 else None})
            examples = (self.steps_per_epoch - start_step) * cfg.batch_size
            record = self.end_epoch(epoch, time.monotonic() - t_epoch, examples)
            self.counters["epoch"], self.counters["step"] = epoch + 1, 0
            if record["overfitting_detected"]:
                self._recover_from_collapse(record)
            self.save_checkpoint()
            last_save = time.monotonic()
            self.run.write_metrics(self.counters["history"])
            self.progress("epoch", record)
        return self.counters["stopped"] or "completed"

    def _due(self, last_save: float, step: int) -> bool:
        every = self.cfg.checkpoint_every_steps
        return (every > 0 and step % every == 0) or (
            time.monotonic() - last_save >= self.cfg.checkpoint_every_s)

    def _recover_from_collapse(self, record: dict) -> None:
        """Catastrophic overfitting: restore the best weights as 'last' and stop."""
        best = self.counters["best_epoch"]
        self.progress("warning", {"message": (
            f"catastrophic overfitting at epoch {record['epoch']}: held-out PGD accuracy fell "
            f"from {self.counters['best_acc']:.1%} to {record['heldout_pgd_acc']:.1%}; "
            f"restoring the weights of epoch {best} and stopping")})
        weights = self.best_weights
        if weights is None:  # a checkpoint from before checkpoints carried the best weights
            _, weights = read_model_file(self.run.path / "best.safetensors")
        for module in dict.fromkeys((self.model, self.product)):  # one module if not averaging
            module.load_state_dict(weights)
        self.counters["history"][-1]["weights_sha256"] = self.run.write_weights(
            self.product, "last", {**self.info, "epoch": best})
        self.counters["stopped"] = "overfitting"


class _Diverged(Exception):
    pass


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / 255
    dims = [0, 2, 3]
    return tuple(x.mean(dims).tolist()), tuple(x.std(dims).tolist())


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False,
          force: bool = False, progress: Progress = _silent) -> TrainResult:
    """Train (or resume) a run in ``out``; returns its metrics and how it stopped.

    ``load_model(out)`` afterwards returns the best weights: by held-out PGD accuracy
    (clean accuracy for standard training), ties to the later epoch. The caller's global
    random state is the same afterwards (forked: the loop draws from its own generators).
    """
    with torch.random.fork_rng(devices=[]):
        return _train(cfg, out, resume=resume, force=force, progress=progress)


def _train(cfg: TrainConfig | None, out: str | Path, *, resume: bool, force: bool,
           progress: Progress) -> TrainResult:
    if resume:
        run = RunDir.open(out)
        run.lock()
        try:
            cfg = TrainConfig.from_dict(run.read_config())
            trainer = _Trainer(cfg.validate(), run, progress)
            trainer.restore()
            return _fit(trainer, progress)
        finally:
            run.unlock()
    if cfg is None:
        raise RobustOptError("give a training config or resume=True")
    RunDir.check_new(out, force=force)  # before the slow set-up: fail fast
    trainer = _Trainer(cfg.validate(), None, progress)
    # only now that data, model and device work is an existing run replaced
    run = trainer.run = RunDir.create(out, force=force)
    run.lock()
    try:
        run.write_config(cfg.to_dict())
        run.write_model_json({**trainer.info, "default_weights": "best",
                              "weights": {"best": "best.safetensors",
                                          "last": "model.safetensors"}})
        trainer.save_checkpoint()
        return _fit(trainer, progress)
    finally:
        run.unlock()


def _fit(trainer: _Trainer, progress: Progress) -> TrainResult:
    """Train to the end (or a stop); a diverged loss keeps the last good checkpoint."""
    try:
        stopped = trainer.fit()
    except _Diverged as err:
        trainer.counters["stopped"] = "nan"
        progress("warning", {"message": f"training stopped: {err}; the last good checkpoint "
                             "and weights are kept"})
        raise RobustOptError(f"training diverged: {err}; the last good checkpoint in "
                             f"{trainer.run.path} is kept (lower the learning rate)") from None
    return TrainResult(trainer.run.path, trainer.counters["history"], stopped, "best")
