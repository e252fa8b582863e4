"""How clip pixels are normalised before the model sees them: the published presets, and the record of one
normalisation that every checkpoint stores and every loader backend applies.

A pixel p in 0..255 of channel c becomes (p * value_scale / 255 - mean[c]) / std[c]. This project and the 2017
release of 3D-ResNets-PyTorch use value_scale 255 and std 1: the 0-255 pixel minus a dataset mean. The authors'
later code and checkpoints (r3d18_K_200ep.pth, ...) use value_scale 1 and a mean and std on the 0-1 scale: their
pipeline is torchvision's ToTensor (p / 255), ScaleValue(value_scale) (x value_scale, default 1), then
Normalize(mean x value_scale, std x value_scale) with mean and std from mean.get_mean_std(value_scale,
dataset), default dataset "kinetics" (opts.py: --value_scale 1, --mean_dataset kinetics, mean and std norm on).

Every backend applies it as one affine map on the 0-255 scale (`on_pixels`): (p - mean * 255 / value_scale) /
(std * 255 / value_scale), the same numbers: DALI's crop_mirror_normalize(mean, std) and augment.py alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

RGB = tuple[float, float, float]

# Per-channel RGB means on the 0-255 scale, as in 3D-ResNets-PyTorch's 2017 mean.py (get_mean(norm_value=1)).
MEANS: dict[str, RGB] = {
    "kinetics": (110.63666788, 103.16065604, 96.29023126),
    "activitynet": (114.7748, 107.7354, 99.4750),
}


def _rgb(values) -> RGB:
    r, g, b = (float(v) for v in values)
    return r, g, b


@dataclass(frozen=True)
class Normalisation:
    """(p * value_scale / 255 - mean) / std per RGB channel, for pixels p in 0..255."""

    mean: RGB  # on the value_scale
    std: RGB = (1.0, 1.0, 1.0)  # on the value_scale
    value_scale: float = 255.0  # what a 255 pixel is worth before mean and std apply

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        object.__setattr__(self, "mean", _rgb(self.mean))
        object.__setattr__(self, "std", _rgb(self.std))
        object.__setattr__(self, "value_scale", float(self.value_scale))
        if not all(math.isfinite(x) for x in (*self.mean, *self.std, self.value_scale)):
            raise ValueError(f"normalisation values must be finite, got {self}")
        if min(self.std) <= 0 or self.value_scale <= 0:
            raise ValueError(f"std and value_scale must be > 0, got {self.std} and {self.value_scale}")

    @classmethod
    def named(cls, name: str) -> Normalisation:
        """The preset PRESETS[name] (KeyError for another name)."""
        return PRESETS[name]

    def name(self) -> str:
        """The preset's name when this is one, else 'custom'."""
        return next((k for k, v in PRESETS.items() if v == self), "custom")

    def describe(self) -> str:
        """One line for logs and summaries: 'kinetics-0-1 (value scale 1, mean [...], std [...])'."""
        return (f"{self.name()} (value scale {self.value_scale:g}, mean {[round(m, 4) for m in self.mean]}, "
                f"std {[round(s, 4) for s in self.std]})")

    def on_pixels(self) -> tuple[RGB, RGB]:
        """(mean, std) on the 0-255 pixel scale: (p - mean) / std == (p * value_scale / 255 - self.mean) / self.std.
        For value_scale 255 they are self.mean and self.std exactly (the factor is 1.0)."""
        k = 255.0 / self.value_scale
        return _rgb(m * k for m in self.mean), _rgb(s * k for s in self.std)

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


# The published normalisations, by the name the command-line flag --norm takes.
PRESETS: dict[str, Normalisation] = {
    # 0-255 minus a mean: this project's default and the 2017 release of 3D-ResNets-PyTorch (its
    # resnet-34-kinetics.pth etc. were trained with the ActivityNet mean, that release's default)
    "kinetics": Normalisation(MEANS["kinetics"]),
    "activitynet": Normalisation(MEANS["activitynet"]),
    # 0-1 then mean and std: the authors' later code (mean.py get_mean_std) and checkpoints (r3d18_K_200ep.pth, ...)
    "kinetics-0-1": Normalisation((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737), value_scale=1.0),
    "activitynet-0-1": Normalisation((0.4477, 0.4209, 0.3906), (0.2767, 0.2695, 0.2714), value_scale=1.0),
}
