"""The training loop: one process, or one of many under torchrun (DDP), from data folders to a
transformers-format checkpoint. The libraries do the heavy lifting (torch DataLoader and DDP, torchvision
transforms, torch.amp, the LR schedulers, ``AveragedModel`` for the weight average, tqdm, matplotlib); this
module is the glue, and what makes a run resumable to the same result.
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from mobilevitv2 import distributed
from mobilevitv2.training import data, model_setup, run_directory, sync_batchnorm
from mobilevitv2.training.arguments import TrainingArguments
from mobilevitv2.training.metrics import ClassificationMetrics, SegmentationMetrics
from mobilevitv2.training.plot import plot_metrics


def train(args: TrainingArguments) -> list[dict]:
    """Train as ``args`` says; the per-epoch metrics (also in ``OUT/metrics.jsonl``). Under torchrun every
    process calls this; the process group is made here when the caller has not made it."""
    made_group = distributed.launched_by_torchrun() and not torch.distributed.is_initialized()
    ctx = distributed.setup(args.device)
    try:
        return Run(args, ctx).run()
    finally:
        if made_group:
            distributed.teardown()


def ema_average(decay: float):
    """The weight average's update with a warm-up (the effective decay grows from 0.1 towards ``decay``,
    so early averages are not dominated by the initial weights)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # counters (BatchNorm's num_batches_tracked) are copied
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


class Run:
    def __init__(self, args: TrainingArguments, ctx: distributed.Context) -> None:
        self.args, self.ctx = args, ctx
        self.task = args.task or data.detect_task(args.data)

    # ----- messages ------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.ctx.is_main:
            print(f"train: {message}", file=sys.stderr, flush=True)
            if os.path.isdir(self.args.out):
                with open(os.path.join(self.args.out, "train.log"), "a", encoding="utf-8") as f:
                    f.write(message + "\n")

    # ----- setup -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        args, ctx = self.args, self.ctx
        if args.batch_size % ctx.world_size:
            raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {ctx.world_size} processes")
        if self.task == "classification":
            labels = data.class_names(args.data)
        else:
            _, config = model_setup.checkpoint_config(args.model, self.task)
            labels = model_setup.labels_for_segmentation(args.num_labels, args.labels_file, config)
        self.labels = labels
        torch.manual_seed(args.seed)  # the same initial head on every process
        start = model_setup.build(self.task, labels, args.model, args.width, args.image_size, args.output_stride)
        self.processor, self.image_size = start.processor, start.image_size
        smoothing = args.label_smoothing if args.label_smoothing is not None else (0.1 if self.task == "classification" else 0.0)
        self.label_smoothing = smoothing

        # data
        self.train_set, self.val_set = self._datasets()
        local_batch = args.batch_size // ctx.world_size
        self.sampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
        )
        loader = dict(num_workers=args.workers, collate_fn=data.collate, pin_memory=ctx.device.type == "cuda")
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=local_batch, sampler=self.sampler,
            drop_last=len(self.train_set) >= args.batch_size, **loader,
        )  # fmt: skip
        self.val_loader = torch.utils.data.DataLoader(
            self.val_set, batch_size=local_batch, sampler=distributed.ShardSampler(len(self.val_set), ctx), **loader
        )

        # precision and layout
        device = ctx.device
        if args.precision == "auto":
            self.amp_dtype = None if device.type != "cuda" else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        else:
            self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
        if self.amp_dtype is torch.float16 and device.type != "cuda":
            raise ValueError("--precision fp16 needs a GPU (on the CPU use bf16 or fp32)")
        self.channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)

        # model, weight average, DDP
        model = start.model
        model.set_implementation(args.implementation, attention=args.attn_implementation)
        if ctx.distributed and args.sync_batchnorm:
            model = sync_batchnorm.convert(model, device.type)
        model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.model = model
        self.ema = None
        if args.ema_decay > 0:
            self.ema = AveragedModel(model, multi_avg_fn=ema_average(args.ema_decay), use_buffers=True)
        wrapped = model
        if ctx.distributed:
            wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward_model = torch.compile(wrapped) if args.compile else wrapped

        # optimizer and schedule (per step)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]  # biases and norm weights
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if args.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=args.lr)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise data.DatasetError(f"{args.data}/train: fewer images than one batch per process")
        total = args.epochs * self.steps_per_epoch
        warmup = min(int(round(args.warmup_epochs * self.steps_per_epoch)), total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total - warmup, 1), eta_min=args.lr * args.min_lr_ratio)
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
            self.scheduler = torch.optim.lr_scheduler.SequentialLR(self.optimizer, [ramp, cosine], milestones=[warmup])
        else:
            self.scheduler = cosine
        for note in start.notes:
            self.log(note)
        self.log(
            f"{self.task}: {len(self.train_set)} train / {len(self.val_set)} val images, {len(labels)} labels, "
            f"image size {self.image_size}, {ctx.world_size} process(es) on {device.type}, global batch {args.batch_size}, "
            f"{self.steps_per_epoch} steps per epoch, precision {self.amp_dtype or torch.float32}".replace("torch.", "")
        )

    def _datasets(self):
        args = self.args
        if self.task == "classification":
            augmentation = data.Augmentation(self.image_size, (args.min_scale, 1.0))
            make = lambda split, aug: data.ClassificationFolder(  # noqa: E731
                args.data, split, self.labels, self.processor, aug, args.seed, args.strict
            )
        else:
            augmentation = data.Augmentation(self.image_size, tuple(args.scale_range))
            make = lambda split, aug: data.SegmentationFolder(  # noqa: E731
                args.data, split, len(self.labels), self.processor, aug, args.seed, args.strict
            )
        return make("train", augmentation), make("val", None)

    # ----- steps -------------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task == "segmentation":
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, labels, ignore_index=data.IGNORE_INDEX, label_smoothing=self.label_smoothing)

    def _inputs(self, batch: dict):
        pixels = batch["pixel_values"].to(self.ctx.device, non_blocking=True)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels, batch["labels"].to(self.ctx.device, non_blocking=True)

    def _check(self, batch: dict) -> int:
        if batch["errors"]:
            raise data.DatasetError(batch["errors"][0])
        for message in batch["skipped"]:
            self.log(f"skipped: {message}")
        return len(batch["skipped"])

    def train_epoch(self, epoch: int) -> dict:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.forward_model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64)  # loss * samples, samples
        skipped = 0
        progress = self._progress(self.train_loader, f"epoch {epoch + 1}/{self.args.epochs}")
        for batch in progress:
            skipped += self._check(batch)
            if distributed.any_rank(self.ctx, batch["size"] == 0) if self.ctx.distributed else batch["size"] == 0:
                continue  # every image of the batch was unreadable (on some process): no step anywhere
            pixels, labels = self._inputs(batch)
            with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.forward_model(pixels).logits
            loss = self.loss(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: the loss is {loss.item()}; lower --lr or use --precision fp32")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.args.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += torch.tensor([loss.item() * len(labels), len(labels)], dtype=torch.float64)
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        totals = distributed.all_reduce_sum(self.ctx, torch.cat([loss_sum, torch.tensor([skipped], dtype=torch.float64)]))
        return {"train_loss": float(totals[0] / max(float(totals[1]), 1.0)), "skipped": int(totals[2])}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict:
        model.eval()
        metrics = (ClassificationMetrics if self.task == "classification" else SegmentationMetrics)(len(self.labels))
        for batch in self._progress(self.val_loader, "validation"):
            self._check(batch)
            if batch["size"] == 0:
                continue
            pixels, labels = self._inputs(batch)
            with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = model(pixels).logits
            metrics.update(logits, labels)
        return metrics.result(distributed.all_reduce_sum(self.ctx, metrics.sums))

    def _progress(self, loader, description: str):
        if not (self.args.progress and self.ctx.is_main):
            return loader
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return loader
        return tqdm(loader, desc=description, leave=False, file=sys.stderr, dynamic_ncols=True)

    # ----- state -------------------------------------------------------------------------------------------
    def state(self, epoch: int, records: list[dict]) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "records": records,
        }

    def restore(self) -> tuple[int, list[dict]]:
        state = torch.load(run_directory.state_path(self.args.out), map_location=self.ctx.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        rng_file = run_directory.rng_path(self.args.out, self.ctx.rank)
        if os.path.isfile(rng_file):
            run_directory.restore_random_states(torch.load(rng_file, weights_only=False))
        return state["epoch"], state["records"]

    def save(self, epoch: int, records: list[dict], chosen: torch.nn.Module) -> None:
        out = self.args.out
        run_directory.save_torch(run_directory.random_states(), run_directory.rng_path(out, self.ctx.rank))
        if self.ctx.is_main:
            run_directory.save_torch(self.state(epoch, records), run_directory.state_path(out))
            chosen.save_pretrained(out)
            self.processor.save_pretrained(out)
            run_directory.write_metrics(out, records)
            plot_metrics(records, os.path.join(out, run_directory.PLOT_FILE))
        distributed.barrier(self.ctx)

    # ----- the run -------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        args, ctx = self.args, self.ctx
        if ctx.is_main:
            run_directory.prepare(args.out, args.to_dict(), args.differences, args.resume, args.overwrite)
        distributed.barrier(ctx)
        self.setup()
        first_epoch, records = 0, []
        if args.resume:
            first_epoch, records = self.restore()
            self.log(f"resumed after epoch {first_epoch} of {args.epochs}")
        last = args.epochs if args.stop_after_epoch is None else min(args.epochs, args.stop_after_epoch)
        for epoch in range(first_epoch, last):
            started = time.perf_counter()
            record = {"epoch": epoch + 1, **self.train_epoch(epoch), "lr": self.optimizer.param_groups[0]["lr"]}
            record.update(self.evaluate(self.model))
            chosen, key = self.model, "val_top1" if self.task == "classification" else "val_miou"
            record["saved"] = "model"
            if self.ema is not None:
                ema_metrics = self.evaluate(self.ema.module)
                record.update({f"{k}_ema": v for k, v in ema_metrics.items()})
                if ema_metrics[key] > record[key]:
                    chosen, record["saved"] = self.ema.module, "ema"
            record["seconds"] = round(time.perf_counter() - started, 2)
            records.append(record)
            self.save(epoch + 1, records, chosen)
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) and not math.isnan(v) else f"{k} {v}" for k, v in record.items())
            self.log(shown)
        if last < args.epochs:
            self.log(f"stopped after epoch {last} of {args.epochs}; continue with --resume")
        else:
            self.log(f"done: {args.out} ({'weight average' if records and records[-1]['saved'] == 'ema' else 'trained weights'})")
        return records
