"""Accuracy bookkeeping: clip top-k, per-video averaging of clip probabilities, per-class and confusion tables,
and predictions in the 3D-ResNets-PyTorch format.

Everything here is pure tensor code on whatever device the inputs live on, so evaluate.py keeps its running sums
on the GPU and synchronises once, at the end; infer.py writes its predictions with reference_predictions.
"""

from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of rows whose label is among the k highest scores, for each k.

    scores: (N, K) float logits or probabilities; labels: (N,) int64, rows with label < 0 (unknown) never count.
    k larger than K is clipped to K (top-5 of a 3-class problem is top-3).
    Returns (len(ks),) int64 on scores' device.
    Ties are broken by torch.topk (lowest index first on CPU), so hand-made test scores should avoid ties.
    """
    n_classes = scores.shape[1]
    k_max = min(max(ks), n_classes)
    top = scores.topk(k_max, dim=1).indices  # (N, k_max), best first
    hit = top == labels[:, None]  # (N, k_max) bool; label -1 never matches
    hit_cum = hit.cumsum(dim=1)  # (N, k_max): hit within the first j+1
    return torch.stack([hit_cum[:, min(k, n_classes) - 1].sum() for k in ks])


def accuracy_summary(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float | int | None]:
    """Top-1, top-5 and their average ("Average" in the paper's Table 2) over rows with a known label.

    scores: (N, K) float; labels: (N,) int64 (-1 = unknown, excluded).
    Fractions in [0, 1]; None if no row is labelled.
    """
    known = labels >= 0
    n = int(known.sum())
    if n == 0:
        return {"top1": None, "top5": None, "avg": None, "n": 0}
    top1, top5 = (topk_correct(scores[known], labels[known], (1, 5)).double() / n).tolist()
    return {"top1": top1, "top5": top5, "avg": (top1 + top5) / 2, "n": n}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(K, K) int64, row = true class, column = predicted class; rows with label < 0 are left out."""
    known = labels >= 0
    flat = labels[known] * n_classes + pred[known]
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_rows(
    scores: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> list[dict[str, str | int | float | None]]:
    """One row per class: {"class", "n", "top1", "top5"}; accuracies are None for a class with no videos."""
    n_classes = len(class_names)
    k5 = min(5, n_classes)
    top = scores.topk(k5, dim=1).indices  # (N, k5)
    rows = []
    for c, name in enumerate(class_names):
        mine = labels == c
        n = int(mine.sum())
        if n == 0:
            rows.append({"class": name, "n": 0, "top1": None, "top5": None})
            continue
        top1 = float((top[mine, 0] == c).double().mean())
        top5 = float((top[mine] == c).any(dim=1).double().mean())
        rows.append({"class": name, "n": n, "top1": top1, "top5": top5})
    return rows


def reference_predictions(
    probs: torch.Tensor, video_ids: list[str], class_names: list[str], k: int = 5
) -> dict:
    """Predictions in 3D-ResNets-PyTorch's (and ActivityNet's evaluator's) JSON form.

    probs: (V, K) float video probabilities, row i belongs to video_ids[i].
    Returns {"version", "results": {video_id: [{"label": name, "score": p}, ... k best, best first]},
    "external_data"}.
    """
    assert probs.shape[0] == len(video_ids), "one row of probabilities per video id"
    scores, idx = probs.double().topk(min(k, len(class_names)), dim=1)
    results = {
        vid: [{"label": class_names[c], "score": s} for c, s in zip(row_idx, row_scores, strict=True)]
        for vid, row_idx, row_scores in zip(video_ids, idx.tolist(), scores.tolist(), strict=True)
    }
    return {
        "version": "VERSION 1.3",
        "results": results,
        "external_data": {"used": False, "details": "3D ResNet trained from the data set alone"},
    }


class VideoAccumulator:
    """Running per-video sums of clip softmax scores, plus clip-level top-1/top-5 hits, for one process.

    add() per batch (stays on the batch's device, no sync); state() / merge() move the populated rows between
    processes (all_gather_object), so the union of every rank's clips can be checked and summarised once.
    """

    def __init__(self, n_videos: int, n_classes: int, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(n_videos, n_classes, dtype=torch.float64, device=device)  # (V, K)
        self.counts = torch.zeros(n_videos, dtype=torch.int64, device=device)  # (V,) clips seen
        self.clip_hits = torch.zeros(2, dtype=torch.int64, device=device)  # clip top-1, top-5 hits (labelled)
        self.clip_labelled = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, video_idx: torch.Tensor) -> None:
        """logits (N, K) float; labels (N,) int64 (-1 unknown); video_idx (N,) int64 in [0, V)."""
        probs = logits.float().softmax(dim=1)
        self.sums.index_add_(0, video_idx, probs.double())
        self.counts.index_add_(0, video_idx, torch.ones_like(video_idx))
        self.clip_hits += topk_correct(logits, labels, (1, 5))
        self.clip_labelled += (labels >= 0).sum()

    def state(self) -> dict:
        """The populated rows, on the CPU, small enough to all_gather_object."""
        rows = self.counts.nonzero().flatten()
        return dict(rows=rows.cpu(), sums=self.sums[rows].cpu(), counts=self.counts[rows].cpu(),
                    clip_hits=self.clip_hits.cpu(), clip_labelled=self.clip_labelled.cpu())

    @classmethod
    def merge(cls, states: list[dict], n_videos: int, n_classes: int) -> VideoAccumulator:
        """One accumulator holding the sum of several processes' state() (on the CPU)."""
        total = cls(n_videos, n_classes)
        for s in states:
            total.sums.index_add_(0, s["rows"], s["sums"])
            total.counts.index_add_(0, s["rows"], s["counts"])
            total.clip_hits += s["clip_hits"]
            total.clip_labelled += s["clip_labelled"]
        return total

    def video_probs(self) -> torch.Tensor:
        """(V, K) float64: each video's mean clip probability (the paper's recognition score); every video must
        have clips."""
        assert bool((self.counts > 0).all()), "a video without clips"
        return self.sums / self.counts[:, None].double()

    def summary(self, video_labels: torch.Tensor) -> dict[str, float | int | None]:
        """The metrics.json numbers: video top-1/top-5/average over labelled videos, clip top-1/top-5."""
        video = accuracy_summary(self.video_probs(), video_labels)
        n_lab = int(self.clip_labelled)
        clip_top1, clip_top5 = (self.clip_hits.double() / n_lab).tolist() if n_lab else (None, None)
        return {
            "video_top1": video["top1"], "video_top5": video["top5"], "video_avg": video["avg"],
            "clip_top1": clip_top1, "clip_top5": clip_top5,
            "n_videos": int((self.counts > 0).sum()), "n_labelled_videos": video["n"],
            "n_clips": int(self.counts.sum()),
        }
