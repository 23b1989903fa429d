"""Validation metrics as sums that add across batches and processes: top-1/top-5 accuracy for
classification, a confusion matrix (mIoU, pixel accuracy) for segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mobilevitv2.training.data import IGNORE_INDEX


class ClassificationMetrics:
    def __init__(self, num_labels: int) -> None:
        self.k = min(5, num_labels)
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 hits, top-k hits, count

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.float(), labels.to(logits.device)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(self.k, dim=1).indices
        hits = top == labels[:, None]
        self.sums += torch.stack([loss, hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(labels))]).double().cpu()

    def result(self, sums: torch.Tensor) -> dict:
        count = max(float(sums[3]), 1.0)
        return {"val_loss": float(sums[0]) / count, "val_top1": float(sums[1]) / count, f"val_top{self.k}": float(sums[2]) / count}


class SegmentationMetrics:
    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        # (loss sum, pixel count) then the confusion matrix, flattened, so one all-reduce adds everything
        self.sums = torch.zeros(2 + num_labels * num_labels, dtype=torch.float64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.to(logits.device)
        upsampled = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(upsampled, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        valid = labels != IGNORE_INDEX
        pairs = labels[valid] * self.num_labels + upsampled.argmax(dim=1)[valid]
        confusion = torch.bincount(pairs, minlength=self.num_labels**2).double().cpu()
        self.sums += torch.cat([torch.stack([loss.double().cpu(), valid.sum().double().cpu()]), confusion])

    def result(self, sums: torch.Tensor) -> dict:
        confusion = sums[2:].view(self.num_labels, self.num_labels)  # rows: truth, columns: prediction
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        present = union > 0
        iou = hits[present] / union[present]
        pixels = max(float(sums[1]), 1.0)
        return {
            "val_loss": float(sums[0]) / pixels,
            "val_miou": float(iou.mean()) if present.any() else 0.0,
            "val_pixel_accuracy": float(hits.sum()) / pixels,
        }
