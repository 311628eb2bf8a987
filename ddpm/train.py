"""The training loop: owns the data on the device, the network, its EMA, the optimiser and the run folder.

A run folder (``runs/<profile>-<model>-<dataset>-<res>px/``) holds:
  config.json     the exact config of the run
  log.txt         human-readable log
  stats.jsonl     one JSON line per ``log_every`` steps: step, images seen, loss, lr, throughput, seconds, the EMA
                  half-life in force and the steps skipped for non-finite gradients
  checkpoint.pt   model, EMA, optimiser, scheduler, step and every rank's RNG states, written atomically and only
                  with finite weights; resuming from it continues exactly where the run stopped
  labels.json     conditional runs: the class index, dataset label, name and image count of every label (also in
                  the checkpoint, so sampling needs no data)
  samples/        periodic 4x8 grids sampled from the EMA weights
  snapshots/      snapshot_every_kimg: the EMA weights every so many images, each a shipped-weights folder
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddpm import data as ddpm_data
from ddpm.cascade import Cascade, augment, lowres_images, stage_batch
from ddpm.checkpoint import CHECKPOINT_NAME, first_mismatch, load_checkpoint, load_weights
from ddpm.files import atomic_save
from ddpm.config import Config, display_path, resolve_path
from ddpm.distributed import (DistInfo, all_gather_object, all_reduce_max, all_reduce_mean, barrier, compile_module,
                              init_distributed)
from ddpm.ema import EMA, ema_half_life
from ddpm.guidance import guided
from ddpm.labels import Classes, classes_path
from ddpm.progress import progress_bar
from ddpm.runfolder import Run, build_diffusion, build_model, config_differences, load_run, run_is_finished


class TrainingDiverged(RuntimeError):
    """Too many steps in a row had non-finite gradients, or the weights stopped being finite: the run stopped and the
    last good checkpoint was kept."""


def warmup_lambda(warmup_steps: int):
    """Linear learning-rate warm-up, then constant (as in Ho et al.)."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    finished: bool
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the previous entry)


class TrainLoop:
    """Algorithm 1 of Ho et al., repeated: draw a batch, noise it, regress the noise, step AdamW, update the EMA."""

    def __init__(self, config: Config, *, data: "ddpm_data.ImageData | None" = None, verbose: bool = True,
                 init_from: Path | str | None = None):
        self.config = config
        self.verbose = verbose
        self.dist, self.device = init_distributed(config.device)
        self.run_dir = config.run_dir
        self.cuda = self.device.type == "cuda"
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size={config.batch_size} is the global batch and must divide by the {self.dist.world_size} processes"
            )
        self.local_batch = config.batch_size // self.dist.world_size

        if self.cuda:  # TF32 for the matmuls/convs that stay in float32 (bf16 autocast does the rest)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

        # Data: decoded once, resident on the device as uint8; flips and scaling happen there.
        data = data or ddpm_data.load_images(
            config.dataset, config.resolution, limit=config.limit_images, split=config.split
        )
        self.images = data.images.to(self.device)
        # A super-resolution stage also sees each image at the base's resolution, made by the same loader
        self.lowres_images = lowres_images(config, data).to(self.device) if config.lowres else None
        # Conditional runs: each image's class index, and the mapping from indices to the dataset's labels.
        self.classes = Classes.from_data(data, config.num_classes) if config.num_classes else None
        self.class_index = self.classes.indices(data.labels).to(self.device) if self.classes else None

        torch.manual_seed(config.seed + self.dist.rank)  # initial weights (identical: rank 0's are broadcast) + dropout
        self.model = build_model(config).to(self.device)
        if config.channels_last:  # NHWC: faster on CUDA, and on the CPU too (benchmarks/memory_format.py)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.diffusion = build_diffusion(config).to(self.device)
        grown = None
        if config.grow_from and not (self.run_dir / CHECKPOINT_NAME).exists():
            grown = self.grow_from(resolve_path(config.grow_from))  # before the EMAs: they start as copies of it
        self.ema = EMA(self.model, config.ema_half_life_kimg, config.ema_rampup)
        self.ema2 = EMA(self.model, config.ema2_half_life_kimg, config.ema_rampup) if config.ema2_half_life_kimg else None
        # Fused AdamW (CPU and CUDA) reads `found_inf` on the device and skips the whole update when it is 1: a step
        # with non-finite gradients is dropped without the host waiting for the GPU (as GradScaler does).
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_lambda(config.warmup_steps))
        # One generator draws every batch's indices, flips, time steps and noise: the same global batch on every
        # rank, each rank keeping its slice, so N processes compute what one process would with the same batch.
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0
        self.seconds = 0.0
        # Device-side counters, read only every log_every steps: no host sync per step.
        self.loss_sum = torch.zeros((), device=self.device)  # sum of the finite losses since the last read
        self.loss_count = torch.zeros((), device=self.device)  # their number
        self.skipped = torch.zeros((), device=self.device)  # steps skipped for non-finite gradients, whole run
        self.skip_streak = torch.zeros((), device=self.device)  # ... in a row, up to now
        self.in_step = False  # True while a step is half done: an exception then must not write a checkpoint
        self.stop_requested = False  # set by Ctrl-C (SIGINT); honoured between steps

        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            self.train_model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        if config.compile:
            self.train_model = compile_module(self.train_model)  # eager if compiling fails

        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        if self.checkpoint_path.exists():
            self.resume()
        elif self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.run_dir / "config.json")
            if self.classes:
                classes_path(self.run_dir).write_text(json.dumps(self.classes.to_list(), indent=1) + "\n")
        barrier(self.dist)
        if grown:
            self.log(grown)
        if init_from is not None and not self.checkpoint_path.exists():
            self.start_from(Path(init_from))

    # ------------------------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if not self.dist.is_main:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        with open(self.run_dir / "log.txt", "a") as f:
            f.write(line + "\n")
        if self.verbose:
            print(message, flush=True)

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
        """(x0, t, noise, labels, stage) for this rank: its slice of one global batch drawn from the shared generator.
        labels (conditional runs only, else None): the images' class indices, each replaced by the null label
        (num_classes) with probability label_dropout, which trains the unconditional model guidance needs.
        stage (a super-resolution stage only, else {}): the network's cond and cond_t, the upsampled low-resolution
        image noised to a level drawn uniformly in 0..aug_max_t."""
        cfg, b, g = self.config, self.config.batch_size, self.generator
        index = torch.randint(0, self.images.shape[0], (b,), device=self.device, generator=g)
        if self.lowres_images is None:
            x0 = ddpm_data.to_model_input(self.images[index], flip=cfg.flip, generator=g)
        else:
            x0, low_up = stage_batch(self.images[index], self.lowres_images[index], flip=cfg.flip, crop=cfg.crop,
                                     generator=g)
        t = self.diffusion.sample_timesteps(b, device=self.device, generator=g)
        noise = torch.randn(x0.shape, device=self.device, generator=g)
        labels = None
        if self.class_index is not None:
            dropped = torch.rand(b, device=self.device, generator=g) < cfg.label_dropout
            labels = torch.where(dropped, cfg.num_classes, self.class_index[index])
        stage = {}
        if self.lowres_images is not None:
            level = torch.randint(0, cfg.aug_max_t + 1, (b,), device=self.device, generator=g)
            aug_noise = torch.randn(x0.shape, device=self.device, generator=g)
            stage = {"cond": augment(self.diffusion, low_up, level, aug_noise), "cond_t": level}
        if self.dist.enabled:
            part = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
            x0, t, noise = x0[part], t[part], noise[part]
            labels = None if labels is None else labels[part]
            stage = {k: v[part] for k, v in stage.items()}
        if cfg.channels_last:
            x0, noise = x0.contiguous(memory_format=torch.channels_last), noise.contiguous(memory_format=torch.channels_last)
            if stage:
                stage["cond"] = stage["cond"].contiguous(memory_format=torch.channels_last)
        return x0, t, noise, labels, stage

    def train_step(self) -> None:
        """One step of Algorithm 1. A step whose gradient norm is not finite changes nothing but the counters."""
        self.in_step = True
        x0, t, noise, labels, stage = self.draw_batch()
        model = self.train_model
        if stage:  # a super-resolution stage also sees its noised low-resolution image
            model = lambda x, t, labels=None: self.train_model(x, t, labels, **stage)  # noqa: E731
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.amp):
            loss = self.diffusion.training_loss(model, x0, t=t, noise=noise, labels=labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip or math.inf)
        bad = ~torch.isfinite(grad_norm)  # a NaN/inf loss gives a NaN norm too
        self.optimizer.found_inf = bad.float()  # fused AdamW skips the update (and its step count) when this is 1
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.ema.update(self.model, self.step * self.config.batch_size, self.config.batch_size)
        if self.ema2 is not None:
            self.ema2.update(self.model, self.step * self.config.batch_size, self.config.batch_size)
        self.loss_sum += torch.where(bad, 0.0, loss.detach().float())
        self.loss_count += (~bad).float()
        self.skipped += bad.float()
        self.skip_streak = (self.skip_streak + 1) * bad.float()
        self.in_step = False

    def read_loss(self) -> float:
        """Mean loss of the good steps since the last read (a host sync, so only every log_every steps)."""
        loss_sum, loss_count = all_reduce_mean(self.loss_sum, self.dist), all_reduce_mean(self.loss_count, self.dist)
        mean = (loss_sum / loss_count.clamp(min=1)).item()
        self.loss_sum.zero_()
        self.loss_count.zero_()
        return mean

    def check_divergence(self, loss: float) -> None:
        """Stop once max_skipped_steps steps in a row were skipped (or the loss of the good ones is not finite)."""
        streak = int(self.skip_streak.item())
        if streak >= self.config.max_skipped_steps or not math.isfinite(loss):
            why = (f"the last {streak} steps had non-finite gradients and were skipped" if streak
                   else f"the loss became {loss}")
            self.diverged(f"{why} (step {self.step})")

    def diverged(self, why: str) -> None:
        kept = (f"the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path.exists()
                else "no checkpoint was written")
        message = (f"training diverged in run {self.run_dir}: {why}; {kept} and was left untouched. "
                   f"Try a lower lr (now {self.config.lr}) or grad_clip (now {self.config.grad_clip}).")
        self.log(message)
        raise TrainingDiverged(message)

    # ------------------------------------------------------------------------------------------------------------------
    def run(self, until_step: int | None = None) -> TrainResult:
        """Train to the config's length (or to `until_step`, to stop early and resume later)."""
        cfg = self.config
        end = min(cfg.total_steps, until_step) if until_step is not None else cfg.total_steps
        losses: list[tuple[int, float]] = []
        if self.step >= end or cfg.time_is_up(self.seconds):
            return TrainResult(self.run_dir, self.step, cfg.finished(self.step, self.seconds), self.seconds, losses)
        self.log(
            f"training {cfg.model} ({sum(p.numel() for p in self.model.parameters()):,} parameters) on {cfg.dataset} "
            f"{cfg.resolution}px, {len(self.images)} images, steps {self.step} -> {end} of {cfg.total_steps}, "
            f"batch {cfg.batch_size}, device {self.device}, {self.dist.world_size} process(es); EMA half-life "
            f"{cfg.ema_half_life_kimg:g} kimg, in force after {cfg.ema_full_after_kimg:g} of "
            f"{cfg.total_steps * cfg.batch_size / 1000:g} kimg"
        )
        self.train_model.train()
        bar = progress_bar(
            total=end, initial=self.step, desc=f"train {cfg.model}", unit="step", disable=not (cfg.progress and self.dist.is_main)
        )
        interval_start, interval_step = time.perf_counter(), self.step
        self.stop_requested = False
        try:
            with self.ctrl_c_between_steps():
                while self.step < end:
                    self.train_step()
                    bar.update(1)
                    last = self.step == end
                    logging = self.step % cfg.log_every == 0 or last
                    if logging:
                        loss = self.read_loss()
                        now = time.perf_counter()
                        elapsed = now - interval_start
                        self.seconds += elapsed
                        images_per_s = (self.step - interval_step) * cfg.batch_size / max(elapsed, 1e-9)
                        interval_start, interval_step = now, self.step
                        losses.append((self.step, loss))
                        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}")
                        self.write_stats(loss, images_per_s)
                        self.check_divergence(loss)
                        if self.out_of_time():  # train_minutes: this step is the run's last
                            last, end = True, self.step
                    snapshot = self.snapshot_due()
                    if self.step % cfg.checkpoint_every == 0 or last or snapshot:
                        self.save_checkpoint()
                    if snapshot:
                        self.save_snapshot()
                    if self.step % cfg.sample_every == 0 or last:
                        self.save_sample_grid()
                    if self.interrupted(logging):
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Keep what was done, if the step is whole: a checkpoint at the current step, then stop.
            bar.close()
            if self.in_step:
                self.log(f"interrupted inside step {self.step + 1}; kept the last checkpoint")
            else:
                self.check_divergence(self.read_loss())
                self.save_checkpoint()
                self.log(f"interrupted at step {self.step}; checkpoint saved, run again to resume")
            raise
        bar.close()
        if self.step < cfg.total_steps and cfg.time_is_up(self.seconds):
            self.log(f"stopped at the time cap (train_minutes={cfg.train_minutes:g}) at step {self.step} of "
                     f"{cfg.total_steps}, after {self.step * cfg.batch_size:,} images; the run counts as finished")
        self.log(f"reached step {self.step} in {self.seconds:.0f} s of training; run folder {display_path(self.run_dir)}")
        return TrainResult(self.run_dir, self.step, cfg.finished(self.step, self.seconds), self.seconds, losses)

    @contextlib.contextmanager
    def ctrl_c_between_steps(self):
        """While training, Ctrl-C (SIGINT) only asks to stop: the loop finishes the step, checkpoints and raises
        KeyboardInterrupt, so no checkpoint holds half a step. A second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return

        def request_stop(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def out_of_time(self) -> bool:
        """Whether the training time has reached train_minutes (at log steps, where self.seconds is current). With
        several processes, rank 0's clock decides for all, so that they stop after the same step."""
        up = self.config.time_is_up(self.seconds)
        if not self.dist.enabled:
            return up
        flag = torch.tensor(float(up and self.dist.is_main), device=self.device)
        return bool(all_reduce_max(flag, self.dist).item())

    def interrupted(self, at_log_step: bool) -> bool:
        """Whether Ctrl-C asked to stop. With several processes they agree first (at log steps only, to keep the
        hot loop free of collectives), so that all of them stop after the same step."""
        if not self.dist.enabled:
            return self.stop_requested
        if not at_log_step:
            return False
        return bool(all_reduce_max(torch.tensor(float(self.stop_requested), device=self.device), self.dist).item())

    def write_stats(self, loss: float, images_per_s: float) -> None:
        if not self.dist.is_main:
            return
        record = {
            "step": self.step,
            "images_seen": self.step * self.config.batch_size,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": images_per_s,
            "seconds": self.seconds,
            "ema_half_life_kimg": ema_half_life(self.step * self.config.batch_size, self.config.ema_half_life_kimg,
                                                self.config.ema_rampup) / 1000,
            "skipped_steps": int(self.skipped.item()),
        }
        with open(self.run_dir / "stats.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------------------------------------------
    def rng_state(self) -> dict:
        """This process's global RNG streams (dropout), per rank: each rank of a DDP run draws its own masks."""
        state = {"torch": torch.get_rng_state()}
        if self.cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self, per_rank_rng: list[dict] | None = None) -> dict:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss_sum": self.loss_sum.detach().cpu(),
            "loss_count": self.loss_count.detach().cpu(),
            "skipped": self.skipped.detach().cpu(),
            "skip_streak": self.skip_streak.detach().cpu(),
            "rng": {"generator": self.generator.get_state(), "per_rank": per_rank_rng or [self.rng_state()]},
            "classes": self.classes.to_list() if self.classes else None,
            **({"ema2": self.ema2.state_dict()} if self.ema2 is not None else {}),
        }

    def weights_finite(self) -> bool:
        averages = [self.ema] + ([self.ema2] if self.ema2 is not None else [])
        tensors = [p.detach() for p in self.model.parameters()] + [p.detach() for a in averages for p in a.parameters()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt atomically: never with non-finite weights, and with every rank's RNG streams."""
        per_rank_rng = all_gather_object(self.rng_state(), self.dist)  # a collective: every rank takes part
        if not self.weights_finite():  # identical on every rank (DDP keeps the weights in step)
            self.diverged(f"the weights are no longer finite at step {self.step}, so no checkpoint was written")
        if self.dist.is_main:
            atomic_save(self.state_dict(per_rank_rng), self.checkpoint_path)
        barrier(self.dist)

    def snapshot_due(self) -> bool:
        """Whether this step's batch crossed a multiple of snapshot_every_kimg thousand images."""
        every = self.config.snapshot_every_kimg
        if not every:
            return False
        b = self.config.batch_size
        return self.step * b // round(every * 1000) > (self.step - 1) * b // round(every * 1000)

    @property
    def snapshot_dir(self) -> Path:
        """snapshots/<run>-<kimg>kimg/ of this step (the run's name in it keeps outputs/<name>/ apart across runs)."""
        images = self.step * self.config.batch_size
        kimg = f"{images // 1000:06d}" + (f".{images % 1000:03d}" if images % 1000 else "")  # 000100, 000000.012
        return self.run_dir / "snapshots" / f"{self.run_dir.name}-{kimg}kimg"

    def save_snapshot(self) -> None:
        """The EMA weights of the checkpoint just written, as a shipped-weights folder (fp16, checked on loading)."""
        from ddpm.weights import export_weights

        if self.dist.is_main:
            export_weights(self.checkpoint_path, self.snapshot_dir)
            if self.ema2 is not None:  # the second EMA beside it, to compare the half-lives along the run
                export_weights(self.checkpoint_path, self.snapshot_dir.with_name(self.snapshot_dir.name + "-ema2"),
                               which="ema2")
            self.log(f"EMA snapshot at step {self.step}: {display_path(self.snapshot_dir)}")
        barrier(self.dist)

    def grow_from(self, folder: Path) -> str:
        """Start this run's network from the EMA weights of a shipped folder trained at another resolution (the same
        network, which is convolutional), at step 0: a fine-tune at the new size, with this run's own optimiser,
        warm-up and schedule."""
        from ddpm.weights import WEIGHTS_NAME, load_weights_file

        if not folder.exists():
            raise FileNotFoundError(f"grow_from: {display_path(folder)} does not exist (a shipped weights folder, e.g. "
                                    f"weights/cpu-long)")
        state = load_weights_file(folder, map_location=self.device)
        if self.classes is not None and Classes.from_list(state.get("classes") or []) != self.classes:
            raise ValueError(f"grow_from {display_path(folder)}: its labels differ from those of {self.config.dataset!r}")
        mismatch = first_mismatch(state["ema"], self.model)
        if mismatch:
            raise ValueError(f"grow_from {display_path(folder)}: its network is not this run's ({mismatch}); growing "
                             f"takes the same network at another resolution")
        self.model.load_state_dict(state["ema"])
        return (f"grown from the EMA weights of {display_path(folder)} (trained at {state['config']['resolution']} px, "
                f"step {state['step']}), to train at {self.config.resolution} px")

    def start_from(self, folder: Path) -> None:
        """Begin a new run from the EMA weights of a shipped folder (ddpm/weights.py), at the folder's step: what a
        lost run folder leaves. Not an exact resume: the raw weights start as the EMA, the optimiser state is new (so
        the learning rate warms up again) and the batches are drawn anew."""
        from ddpm.weights import WEIGHTS_NAME, load_weights_file

        state = load_weights_file(folder, map_location=self.device)
        if self.classes is not None and state.get("classes") and Classes.from_list(state["classes"]) != self.classes:
            raise ValueError(f"--init-from {folder}: its labels differ from those of {self.config.dataset!r} now")
        load_weights(self.model, state["ema"], folder / WEIGHTS_NAME, "EMA")  # the EMAs copy it at the first step
        self.step, self.seconds = state["step"], state["seconds"]
        self.generator.manual_seed(self.config.seed + self.step)  # not the batches the run began with
        if self.dist.is_main and (folder / "stats.jsonl").exists():  # the loss curve so far, as the folder had it
            (self.run_dir / "stats.jsonl").write_text((folder / "stats.jsonl").read_text())
        self.log(f"started from the EMA weights of {display_path(folder)} at step {self.step} "
                 f"({self.step * self.config.batch_size:,} images): a new run, not an exact resume (new optimiser "
                 f"state and warm-up, raw weights = the EMA)")

    def resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        saved = Config.from_dict(state["config"])
        differences = config_differences(saved, self.config)
        if differences:
            changed = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in differences.items())
            raise ValueError(
                f"{self.checkpoint_path} was trained with another config ({changed}); resume with the saved config, "
                f"or start a new run with another run_name / runs_dir"
            )
        saved_classes = state.get("classes")
        if saved_classes is not None and self.classes is not None and Classes.from_list(saved_classes) != self.classes:
            raise ValueError(f"{self.checkpoint_path} was trained on other labels than {self.config.dataset!r} has "
                             f"now (see {classes_path(self.run_dir)}); resume on the same data, or start a new run")
        load_weights(self.model, state["model"], self.checkpoint_path)
        load_weights(self.ema, state["ema"], self.checkpoint_path, "EMA")
        if self.ema2 is not None:
            load_weights(self.ema2, state["ema2"], self.checkpoint_path, "second EMA")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.seconds = state["step"], state["seconds"]
        device_scalar = lambda key: torch.as_tensor(state.get(key, 0.0), dtype=torch.float32).to(self.device)  # noqa: E731
        self.loss_sum, self.loss_count = device_scalar("loss_sum"), device_scalar("loss_count")
        self.skipped, self.skip_streak = device_scalar("skipped"), device_scalar("skip_streak")
        self.generator.set_state(state["rng"]["generator"].cpu())
        self.restore_rng(state["rng"])
        if self.dist.is_main:
            truncate_stats(self.run_dir / "stats.jsonl", self.step)
        self.log(f"resumed {self.checkpoint_path} at step {self.step}")

    def restore_rng(self, rng: dict) -> None:
        """Each rank takes back its own dropout streams. With another number of processes than were saved, each rank
        starts fresh ones derived from (seed, rank, step): reproducible, though not the uninterrupted run's."""
        per_rank = rng.get("per_rank") or [{k: v for k, v in rng.items() if k in ("torch", "cuda")}]  # older format
        if len(per_rank) == self.dist.world_size:
            mine = per_rank[self.dist.rank]
            torch.set_rng_state(mine["torch"].cpu())
            if self.cuda and "cuda" in mine:
                torch.cuda.set_rng_state(mine["cuda"].cpu(), self.device)
        else:
            self.log(f"the checkpoint holds the RNG streams of {len(per_rank)} process(es), this run has "
                     f"{self.dist.world_size}: new dropout streams from seed, rank and step")
            torch.manual_seed(hash((self.config.seed, self.dist.rank, self.step)) % 2**63)

    @torch.no_grad()
    def save_sample_grid(self) -> None:
        """A 4x8 grid from the EMA weights (fixed noise, DDIM), so the runs' progress can be compared by eye."""
        if not self.dist.is_main:
            return
        from ddpm.viz import save_grid

        model = self.ema.module.eval()
        generator = torch.Generator(device=self.device).manual_seed(1234)
        if self.lowres_images is not None:  # a stage: 32 real low-resolution images upscaled (needs no base)
            index = torch.randperm(len(self.lowres_images), generator=torch.Generator().manual_seed(1234))[:32]
            labels = self.class_index[index.to(self.device)] if self.class_index is not None else None
            stage = Cascade(None, model, self.diffusion, self.config.aug_t)
            images = stage.upscale(self.lowres_images[index.to(self.device)], labels, sampler="ddim",
                                   steps=self.config.sample_steps, generator=generator, device=self.device)
            save_grid(images, self.run_dir / "samples" / f"step-{self.step:07d}.png", scale=1)
            return
        if self.classes:  # conditional: labels drawn with the data's frequencies, the config's guidance scale
            model = guided(model, self.classes.draw(32, seed=1234).to(self.device), self.config.sampling_guidance)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.amp):
            images = self.diffusion.sample(
                model, (32, 3, self.config.resolution, self.config.resolution), sampler="ddim",
                steps=self.config.sample_steps, generator=generator, device=self.device,
            )
        # native size (scale=1): small files, which the notebook can read back and show side by side (save_grid_row)
        save_grid(images, self.run_dir / "samples" / f"step-{self.step:07d}.png", scale=1)


def truncate_stats(path: Path, step: int) -> None:
    """Drop stats lines written after the checkpoint we resume from: they will be written again."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def train(config: Config, *, until_step: int | None = None, data=None, verbose: bool = True,
          init_from: Path | str | None = None) -> TrainResult:
    """Train (or resume) the run of `config` in its run folder; a new run may start from the EMA weights of a shipped
    folder (init_from), which a run folder with a checkpoint ignores."""
    return TrainLoop(config, data=data, verbose=verbose, init_from=init_from).run(until_step)


def train_or_load(config: Config, *, device: str | torch.device | None = None, verbose: bool = True) -> Run:
    """The notebook's training cell: reuse a finished checkpoint of the same config if one exists, else train
    (resuming a partial run), then load the run."""
    if run_is_finished(config):
        if verbose:
            print(f"reusing the finished run in {display_path(config.run_dir)} (delete it to train again)")
    else:
        train(config, verbose=verbose)
    from ddpm.distributed import resolve_device

    return load_run(config.run_dir, device or resolve_device(config.device))
