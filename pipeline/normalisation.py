"""How clip pixels are normalised before the model sees them: the named per-channel means, and the record of one
normalisation that every checkpoint stores.

A pixel p in 0..255 of channel c becomes (p * value_scale / 255 - mean[c]) / std[c]. This project and the 2017
release of 3D-ResNets-PyTorch use value_scale 255 and std 1: the 0-255 pixel minus a dataset mean. The authors'
later checkpoints (r3d18_K_200ep.pth, ...) expect value_scale 1 and a mean and std on the 0-1 scale; the record
holds that too, but the loaders apply only the first kind today (Normalisation.loader_mean says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# Per-channel RGB means on the 0-255 scale, as in 3D-ResNets-PyTorch (mean.py, get_mean(norm_value=1)).
MEANS: dict[str, tuple[float, float, float]] = {
    "kinetics": (110.63666788, 103.16065604, 96.29023126),
    "activitynet": (114.7748, 107.7354, 99.4750),
}


@dataclass(frozen=True)
class Normalisation:
    """(p * value_scale / 255 - mean) / std per RGB channel, for pixels p in 0..255."""

    mean: tuple[float, float, float]  # on the value_scale
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # on the value_scale
    value_scale: float = 255.0  # what a 255 pixel is worth before mean and std apply

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if not all(math.isfinite(x) for x in (*self.mean, *self.std, self.value_scale)):
            raise ValueError(f"normalisation values must be finite, got {self}")
        if min(self.std) <= 0 or self.value_scale <= 0:
            raise ValueError(f"std and value_scale must be > 0, got {self.std} and {self.value_scale}")

    @classmethod
    def named(cls, name: str) -> Normalisation:
        """0-255 pixels minus MEANS[name] (KeyError for another name)."""
        return cls(mean=MEANS[name])

    def loader_mean(self) -> tuple[float, float, float]:
        """The 0-255 mean that pipeline.build_loader subtracts; ValueError for a normalisation with another
        value scale or a std, which the loaders cannot apply yet."""
        if self.value_scale != 255.0 or self.std != (1.0, 1.0, 1.0):
            raise ValueError(f"the loaders only subtract a mean from 0-255 pixels; this normalisation also "
                             f"scales to {self.value_scale:g} and divides by std {list(self.std)}")
        return self.mean

    def to_dict(self) -> dict[str, float | list[float]]:
        """Plain types, as stored in checkpoints and metrics.json."""
        return {"value_scale": self.value_scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Normalisation:
        """The inverse of to_dict. Without value_scale and std (checkpoints written before they were stored),
        the mean was subtracted from 0-255 pixels: value_scale 255, std 1. ValueError for malformed values."""
        try:
            return cls(mean=_rgb(d["mean"]), std=_rgb(d.get("std", (1.0, 1.0, 1.0))),
                       value_scale=float(d.get("value_scale", 255.0)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a normalisation record: {dict(d)!r}") from e


def _rgb(values) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b
