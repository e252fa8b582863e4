"""model/: architecture (shapes, parameter counts, reference state_dict layout), the type-A shortcut,
checkpoint loading and its errors, autocast / channels_last / torch.compile. CPU only, tiny widths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model.resnet as resnet_mod
from model import BasicBlock, Bottleneck, CheckpointError, ZeroPadShortcut, build_model, load_weights
from model.checkpoint import unwrap_model
from model.resnet import ARCHS  # the other families: tests/test_model_zoo.py

# The paper's input: (N, 3, T=16, H=112, W=112).
CLIP = (3, 16, 112, 112)
SMALL = (3, 8, 32, 32)  # enough for every stage to keep >= 1 voxel; used where the paper's size adds nothing


def _tiny(
    arch: str = "resnet-18", n_classes: int = 5, shortcut: str = "A", seed: int = 0, **kw
) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, n_classes, shortcut=shortcut, widen_factor=kw.pop("widen_factor", 0.125), **kw)


def _meta(arch: str, **kw) -> torch.nn.Module:
    """Full-width model with no storage: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return build_model(arch, **kw)


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_every_depth(arch: str, shortcut: str) -> None:
    net = _tiny(arch, n_classes=7, shortcut=shortcut).eval()
    with torch.no_grad():
        out = net(torch.randn(1, *CLIP))
    assert out.shape == (1, 7)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "published_m"), [("resnet-18", 33.2), ("resnet-34", 63.5)])
def test_parameter_count_matches_paper(arch: str, published_m: float) -> None:
    net = _meta(arch, n_classes=400, shortcut="A")
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 1e6 - published_m) / published_m < 0.005, n


def _reference_layout(
    depth: int, shortcut: str, n_classes: int, widen: float = 1.0
) -> dict[str, tuple[int, ...]]:
    """state_dict (key -> shape) of 3D-ResNets-PyTorch `generate_model(depth, shortcut_type=...)`,
    written out from its module tree, independently of model/resnet.py."""
    layers = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    expansion = 1 if depth <= 34 else 4
    planes = [int(p * widen) for p in (64, 128, 256, 512)]

    def bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}  # fmt: skip

    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (planes[0], 3, 7, 7, 7), **bn("bn1", planes[0])}
    c_in = planes[0]
    for stage, (p, n_blocks) in enumerate(zip(planes, layers, strict=True), start=1):
        stride = 1 if stage == 1 else 2
        for i in range(n_blocks):
            b = f"layer{stage}.{i}"
            c_block_in = c_in if i == 0 else p * expansion
            if expansion == 1:
                keys[f"{b}.conv1.weight"] = (p, c_block_in, 3, 3, 3)
                keys |= bn(f"{b}.bn1", p)
                keys[f"{b}.conv2.weight"] = (p, p, 3, 3, 3)
                keys |= bn(f"{b}.bn2", p)
            else:
                keys[f"{b}.conv1.weight"] = (p, c_block_in, 1, 1, 1)
                keys |= bn(f"{b}.bn1", p)
                keys[f"{b}.conv2.weight"] = (p, p, 3, 3, 3)
                keys |= bn(f"{b}.bn2", p)
                keys[f"{b}.conv3.weight"] = (p * 4, p, 1, 1, 1)
                keys |= bn(f"{b}.bn3", p * 4)
            if i == 0 and shortcut == "B" and (stride != 1 or c_in != p * expansion):
                keys[f"{b}.downsample.0.weight"] = (p * expansion, c_in, 1, 1, 1)
                keys |= bn(f"{b}.downsample.1", p * expansion)
        c_in = p * expansion
    keys["fc.weight"] = (n_classes, planes[3] * expansion)
    keys["fc.bias"] = (n_classes,)
    return keys


@pytest.mark.parametrize(
    ("depth", "shortcut", "n_keys"),
    [(18, "A", 104), (18, "B", 122), (34, "A", 200), (10, "B", 74), (50, "B", 320)],
)
def test_state_dict_matches_reference_layout(depth: int, shortcut: str, n_keys: int) -> None:
    net = _meta(f"resnet-{depth}", n_classes=400, shortcut=shortcut)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = _reference_layout(depth, shortcut, 400)
    assert len(expected) == n_keys
    assert list(ours) == list(expected)  # same keys, same order
    assert ours == expected


def test_state_dict_literal_samples() -> None:
    """A few keys spelled out, as they appear in the published checkpoints."""
    r18b = {
        k: tuple(v.shape) for k, v in _meta("resnet-18", n_classes=400, shortcut="B").state_dict().items()
    }
    assert r18b["conv1.weight"] == (64, 3, 7, 7, 7)
    assert r18b["layer2.0.downsample.0.weight"] == (128, 64, 1, 1, 1)
    assert r18b["layer4.0.downsample.1.running_var"] == (512,)
    assert r18b["layer4.1.conv2.weight"] == (512, 512, 3, 3, 3)
    assert r18b["fc.weight"] == (400, 512)
    assert "layer1.0.downsample.0.weight" not in r18b
    r50a = {
        k: tuple(v.shape) for k, v in _meta("resnet-50", n_classes=400, shortcut="A").state_dict().items()
    }
    assert not any("downsample" in k for k in r50a)  # type A has no parameters
    assert r50a["layer1.0.conv3.weight"] == (256, 64, 1, 1, 1)
    assert r50a["layer2.0.conv1.weight"] == (128, 256, 1, 1, 1)
    assert r50a["fc.weight"] == (400, 2048)
    r18w = _meta("resnet-18", n_classes=10, widen_factor=0.5).state_dict()
    assert tuple(r18w["layer3.0.conv1.weight"].shape) == (128, 64, 3, 3, 3)


def test_stem_options() -> None:
    net = _meta("resnet-18", n_classes=400, conv1_t_size=3, conv1_t_stride=2, no_max_pool=True)
    assert net.conv1.weight.shape == (64, 3, 3, 7, 7)
    assert net.conv1.stride == (2, 2, 2) and net.conv1.padding == (1, 3, 3)
    paper = _meta("resnet-18", n_classes=400)
    assert paper.conv1.stride == (1, 2, 2) and paper.conv1.padding == (3, 3, 3)
    # Without max pool the last feature map is 2x larger in each dimension; the head still sees (N, C).
    shapes = {}
    for no_max_pool in (False, True):
        net = _tiny(no_max_pool=no_max_pool).eval()
        net.layer4.register_forward_hook(lambda m, i, o, key=no_max_pool: shapes.__setitem__(key, o.shape))
        with torch.no_grad():
            assert net(torch.randn(1, *CLIP)).shape == (1, 5)
    assert shapes[False][2:] == (1, 4, 4) and shapes[True][2:] == (2, 7, 7)


def test_build_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resnet-18"):
        build_model("resnet18", 10)
    with pytest.raises(ValueError, match="shortcut"):
        build_model("resnet-18", 10, shortcut="C")
    with pytest.raises(ValueError, match="n_classes"):
        build_model("resnet-18", 0)
    with pytest.raises(ValueError, match="widen_factor"):
        build_model("resnet-18", 10, widen_factor=0.01)


# ---------------------------------------------------------------- type-A shortcut


def test_zero_pad_shortcut_exact_values() -> None:
    x = torch.arange(2 * 3 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 3, 5, 6, 7)
    out = resnet_mod.zero_pad_shortcut(x, planes=8, stride=2)
    assert out.shape == (2, 8, 3, 3, 4)
    assert torch.equal(out[:, :3], x[:, :, ::2, ::2, ::2])  # voxel (0, 0, 0), (0, 0, 2), ...
    assert torch.equal(out[:, 3:], torch.zeros(2, 5, 3, 3, 4))
    # By hand on a 2x2x2 cube: stride 2 keeps the first voxel only, then one zero channel.
    cube = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 2, 2) + 1
    assert resnet_mod.zero_pad_shortcut(cube, 2, 2).flatten().tolist() == [1.0, 0.0]
    # stride 1 (a Bottleneck's first block): channels grow, nothing is subsampled.
    same = resnet_mod.zero_pad_shortcut(x, planes=12, stride=1)
    assert torch.equal(same[:, :3], x) and not same[:, 3:].any()


def _detaching_shortcut(x: torch.Tensor, planes: int, stride: int) -> torch.Tensor:
    """The reference's version: concatenates `out.data`, which cuts the shortcut out of the graph."""
    out = F.avg_pool3d(x, kernel_size=1, stride=stride)
    zeros = torch.zeros(out.shape[0], planes - out.shape[1], *out.shape[2:], dtype=out.dtype)
    return torch.cat([out.data, zeros], dim=1)


def _shortcut_gradient_reaches_input(
    block: torch.nn.Module, last_bn: torch.nn.BatchNorm3d, c_in: int
) -> bool:
    """With the residual branch's last BN scaled to 0, the block is relu(shortcut(x)), so for x > 0
    d sum(out) / dx is exactly 1 at the kept voxels (stride 2: every other one) and 0 elsewhere."""
    torch.manual_seed(0)
    with torch.no_grad():
        last_bn.weight.zero_()
    x = (torch.rand(2, c_in, 4, 6, 6) + 0.5).requires_grad_()
    block(x).sum().backward()
    expected = torch.zeros_like(x)
    expected[:, :, ::2, ::2, ::2] = 1
    return x.grad is not None and torch.equal(x.grad, expected)


@pytest.mark.parametrize("block_type", ["basic", "bottleneck"])
def test_type_a_shortcut_passes_gradient(block_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[torch.nn.Module, torch.nn.BatchNorm3d, int]:
        if block_type == "basic":
            b = BasicBlock(4, 8, stride=2, downsample=ZeroPadShortcut(8, 2))
            return b, b.bn2, 4
        b = Bottleneck(8, 4, stride=2, downsample=ZeroPadShortcut(16, 2))
        return b, b.bn3, 8

    assert _shortcut_gradient_reaches_input(*make())
    # The check is strong enough to catch the reference's detaching shortcut:
    monkeypatch.setattr(resnet_mod, "zero_pad_shortcut", _detaching_shortcut)
    assert not _shortcut_gradient_reaches_input(*make())


def test_whole_type_a_model_gets_gradient_through_shortcuts() -> None:
    """Zero every residual branch: only shortcuts connect conv1 to the head, so conv1 still learns."""
    net = _tiny("resnet-18", shortcut="A")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BasicBlock):
                m.bn2.weight.zero_()
    net(torch.randn(2, *SMALL)).logsumexp(1).sum().backward()
    assert net.conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- checkpoints


def _trained_stats(net: torch.nn.Module) -> torch.nn.Module:
    """Move BN running stats off their defaults so a round trip that forgot buffers would show."""
    net.train()
    with torch.no_grad():
        net(torch.randn(2, *SMALL))
    return net.eval()


def test_round_trip_reference_layout(tmp_path: Path) -> None:
    src = _trained_stats(_tiny("resnet-18", n_classes=400, shortcut="B", seed=1))
    path = tmp_path / "save_200.pth"
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet-18",
            "state_dict": {"module." + k: v for k, v in src.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )
    dst = _tiny("resnet-18", n_classes=400, shortcut="B", seed=2).eval()
    report = load_weights(dst, path)
    assert report.arch == "resnet-18" and report.metadata["epoch"] == 200
    assert not report.head_replaced and report.n_loaded == len(src.state_dict())
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_round_trip_ours_raw_and_compiled_prefix(tmp_path: Path) -> None:
    src = _trained_stats(_tiny(seed=1))
    ours = tmp_path / "last.pt"
    sd = {"_orig_mod." + k: v for k, v in src.state_dict().items()}
    torch.save({"model": sd, "optimizer": {}, "epoch": 3, "config": {"arch": "resnet-18"}}, ours)
    raw = tmp_path / "raw.pt"
    torch.save(src.state_dict(), raw)
    x = torch.randn(1, *SMALL)
    for path in (ours, raw):
        dst = _tiny(seed=2).eval()
        target = torch.compile(dst)  # lazy: nothing compiles until called; load_weights looks through it
        report = load_weights(target, path)
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))
    assert load_weights(_tiny(), ours).arch == "resnet-18"
    assert report.arch is None and report.metadata == {}  # raw state dict: no metadata
    assert unwrap_model(target) is dst


def test_old_checkpoint_without_num_batches_tracked(tmp_path: Path) -> None:
    src = _trained_stats(_tiny(seed=1))
    path = tmp_path / "old.pth"
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd, "arch": "resnet-18"}, path)
    dst = _tiny(seed=2).eval()
    load_weights(dst, path)
    x = torch.randn(1, *SMALL)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_head_mismatch_keeps_fresh_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _trained_stats(_tiny(n_classes=400, seed=1))
    path = tmp_path / "kinetics.pth"
    torch.save({"state_dict": src.state_dict(), "arch": "resnet-18"}, path)
    dst = _tiny(n_classes=10, seed=2)
    fresh_fc = dst.fc.weight.detach().clone()
    report = load_weights(dst, path)
    assert report.head_replaced
    assert report.n_loaded == len(src.state_dict()) - 2
    assert torch.equal(dst.fc.weight, fresh_fc)
    assert torch.equal(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.equal(dst.bn1.running_mean, src.bn1.running_mean)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "400" in printed[0] and "10" in printed[0] and "kinetics.pth" in printed[0]
    with pytest.raises(CheckpointError, match="fc.weight"):
        load_weights(_tiny(n_classes=10), path, strict_head=True)


def test_other_mismatch_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "typeB.pth"
    torch.save({"state_dict": _tiny(shortcut="B").state_dict(), "arch": "resnet-18"}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(_tiny(shortcut="A"), path)
    msg = str(err.value)
    assert "typeB.pth" in msg and "layer2.0.downsample.0.weight" in msg and "(18 in all)" in msg
    assert "resnet-18" in msg  # the file's arch, as a hint

    wide = tmp_path / "wide.pth"
    torch.save(_tiny(widen_factor=0.25).state_dict(), wide)
    with pytest.raises(
        CheckpointError, match=r"shape differs: conv1.weight \(16, 3, 7, 7, 7\) vs model \(8,"
    ):
        load_weights(_tiny(widen_factor=0.125), wide)

    deeper = tmp_path / "r34.pth"
    torch.save(_tiny("resnet-34").state_dict(), deeper)
    with pytest.raises(CheckpointError, match="not in the model: layer1.2.conv1.weight"):
        load_weights(_tiny("resnet-18"), deeper)


@dataclasses.dataclass
class _NotAllowed:
    arch: str = "resnet-18"


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "missing", "empty", "tensor", "no_state_dict", "pickled_object"]
)
def test_bad_files_give_one_line_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pth"
    good = _tiny().state_dict()
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif kind == "truncated":
        torch.save({"state_dict": good}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "no_state_dict":
        torch.save({"epoch": 1, "weights": [1, 2]}, path)
    elif kind == "pickled_object":
        torch.save({"model": good, "config": _NotAllowed()}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(_tiny(), path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    if kind == "pickled_object":
        assert "weights_only" in msg


# ---------------------------------------------------------------- precision, memory format, compile


def test_autocast_bf16_and_channels_last() -> None:
    # Gradients are compared in eval mode: in train mode layer4's BN sees 2 values per channel at this
    # size, which amplifies float rounding (~3% in conv1's grad) and would hide real differences.
    net = _tiny(seed=3).eval()
    x = torch.randn(2, *SMALL)
    ref = net(x)
    ref.sum().backward()
    ref_grad = net.conv1.weight.grad.clone()
    net.zero_grad()

    net_cl = net.to(memory_format=torch.channels_last_3d)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    out_cl = net_cl(x_cl)
    out_cl.sum().backward()
    torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net_cl.conv1.weight.grad, ref_grad, rtol=1e-4, atol=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = net_cl(x_cl)
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.float() - ref).abs().max() < 0.05 * ref.abs().max()

    net_cl.train()  # a bf16 training step runs and gives finite fp32 parameter gradients
    net_cl.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net_cl(x_cl), torch.tensor([0, 1]))
    loss.backward()
    assert net_cl.conv1.weight.grad.dtype == torch.float32 and torch.isfinite(net_cl.conv1.weight.grad).all()


def test_compile_inference_matches_eager() -> None:
    torch._dynamo.reset()  # a fresh cache: other compiled calls with other shapes would make shapes dynamic
    net = _tiny("resnet-10", widen_factor=0.0625).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net)(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_training_step_matches_eager() -> None:
    """Forward + backward through the compiled graph (train-mode BN, type-A shortcuts): ~45 s on 2 cores."""
    torch._dynamo.reset()
    x = torch.randn(4, 3, 8, 32, 32)
    losses, grads = [], []
    for compiled in (False, True):
        net = _tiny("resnet-10", widen_factor=0.0625, shortcut="A")
        run = torch.compile(net) if compiled else net
        loss = F.cross_entropy(run(x), torch.arange(4) % 5)
        loss.backward()
        losses.append(loss.detach())
        grads.append(net.fc.weight.grad)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    # fc's gradient sits right after the forward graph; deeper grads differ more through train-mode BN.
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-4)
