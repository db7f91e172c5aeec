from functools import cache

import pytest
import torch
from torch import nn

from runtime.models import MODEL_NAMES, ModelError, build, input_shape, layers
from runtime.zoo.base import Block
from runtime.zoo.mobilenet import InvertedResidual
from runtime.zoo.resnet import BasicBlock

torch.set_num_threads(1)


@cache
def _model(name: str) -> nn.Module:
    """One shared instance per model: vgg16_bn alone takes seconds to build."""
    return build(name)


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def _run_layers(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for _, modules in layers(model):
        for module in modules:
            x = module(x)
    return x


def _unit_params(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for _, modules in layers(model):
        for module in modules:
            ids |= {id(p) for p in module.parameters()}
    return ids


@pytest.mark.parametrize(
    ("name", "expected"),
    [("vgg16_bn", 138_365_992), ("resnet18", 11_689_512), ("mobilenet_v2", 3_504_872)],
)
def test_parameter_counts_match_torchvision(name: str, expected: int) -> None:
    assert sum(p.numel() for p in _model(name).parameters()) == expected


def test_yolov2_tiny_parameter_count_matches_darknet_cfg() -> None:
    filters = [3, 16, 32, 64, 128, 256, 512, 1024, 1024]
    convs = sum(cin * cout * 9 for cin, cout in zip(filters[:-1], filters[1:], strict=True))
    bns = 2 * sum(filters[1:])
    head = 1024 * 125 + 125
    assert sum(p.numel() for p in _model("yolov2_tiny").parameters()) == convs + bns + head


def test_tiny_is_small() -> None:
    assert sum(p.numel() for p in _model("tiny").parameters()) < 100_000


@pytest.mark.parametrize(
    ("name", "out_shape"),
    [
        ("vgg16_bn", (1, 1000)),
        ("resnet18", (1, 1000)),
        ("mobilenet_v2", (1, 1000)),
        ("yolov2_tiny", (1, 125, 13, 13)),
        ("tiny", (1, 10)),
    ],
)
def test_output_shape_and_unit_scale_at_native_input(name: str, out_shape: tuple) -> None:
    with torch.no_grad():
        y = _model(name)(_input(input_shape(name)))
    assert y.shape == out_shape
    assert y.dtype == torch.float32
    # Calibrated BN keeps random-weight outputs O(1), so 1e-5 tolerances downstream mean something.
    assert 0.01 < y.std().item() < 100


@pytest.mark.parametrize(
    ("name", "size"),
    [("vgg16_bn", 32), ("resnet18", 64), ("mobilenet_v2", 64), ("yolov2_tiny", 96), ("tiny", 32)],
)
def test_units_in_order_reproduce_forward_exactly(name: str, size: int) -> None:
    model = _model(name)
    x = _input((3, size, size), seed=1)
    with torch.no_grad():
        assert torch.equal(_run_layers(model, x), model(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_units_hold_every_parameter_once(name: str) -> None:
    model = _model(name)
    assert _unit_params(model) == {id(p) for p in model.parameters()}
    names = [n for n, _ in layers(model)]
    assert len(names) == len(set(names))


def test_vgg16_bn_state_dict_keys_equal_torchvision() -> None:
    convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = []
    for i in convs:
        expected += [f"features.{i}.weight", f"features.{i}.bias"]
        expected += [f"features.{i + 1}.{k}" for k in bn_keys]
    for i in (0, 3, 6):
        expected += [f"classifier.{i}.weight", f"classifier.{i}.bias"]
    assert list(_model("vgg16_bn").state_dict()) == expected


def test_vgg16_bn_module_structure_is_torchvision() -> None:
    model = _model("vgg16_bn")
    assert len(model.features) == 44
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [6, 13, 23, 33, 43]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == (7, 7)
    head = [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert [type(m) for m in model.classifier] == head
    names = [n for n, _ in layers(model)]
    assert names[43:47] == ["features.43", "avgpool", "flatten", "classifier.0"]
    assert names[-1] == "classifier.6"


def test_resnet18_and_mobilenet_v2_use_torchvision_key_names() -> None:
    resnet = _model("resnet18").state_dict()
    resnet_keys = ["conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight"]
    resnet_keys += ["layer4.1.bn2.bias", "fc.weight", "fc.bias"]
    assert set(resnet_keys) <= set(resnet)
    assert "layer1.0.downsample.0.weight" not in resnet
    mobilenet = _model("mobilenet_v2").state_dict()
    mobilenet_keys = ["features.0.0.weight", "features.1.conv.0.0.weight"]
    mobilenet_keys += ["features.1.conv.2.weight", "features.2.conv.3.running_mean"]
    mobilenet_keys += ["features.18.1.weight", "classifier.1.bias"]
    assert set(mobilenet_keys) <= set(mobilenet)


def test_mobilenet_v2_residual_blocks_are_where_torchvision_has_them() -> None:
    blocks = {n: m for n, (m,) in layers(_model("mobilenet_v2")) if isinstance(m, Block)}
    residual = sorted(int(n.split(".")[1]) for n, b in blocks.items() if len(b.branches()) == 2)
    assert residual == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    assert len(blocks) == 17


def test_yolov2_tiny_follows_darknet_layer_order() -> None:
    modules = [m for _, (m,) in layers(_model("yolov2_tiny"))]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256, 512, 1024, 1024, 125]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs[:-1])
    assert convs[-1].kernel_size == (1, 1) and convs[-1].bias is not None
    pools = [m for m in modules if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2)] * 5 + [(2, 1)]
    pad = modules.index(pools[-1]) - 1
    assert isinstance(modules[pad], nn.ZeroPad2d) and modules[pad].padding == (0, 1, 0, 1)
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in modules) == 8


def test_tiny_exercises_every_partitioning_construct() -> None:
    modules = [m for _, (m,) in layers(_model("tiny"))]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert any(c.padding != (0, 0) and c.stride == (1, 1) for c in convs)
    assert any(c.stride == (2, 2) for c in convs)
    assert any(isinstance(m, nn.MaxPool2d) for m in modules)
    blocks = [m for m in modules if isinstance(m, Block)]
    shortcuts = [b.branches()[1] for b in blocks]
    assert [type(m) for m in shortcuts[0]] == [nn.Conv2d, nn.BatchNorm2d]
    assert shortcuts[0][0].kernel_size == (1, 1) and shortcuts[0][0].stride == (2, 2)
    assert shortcuts[1] == []
    depthwise = [m for m in blocks[1].branches()[0] if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [c.dilation for c in depthwise] == [(2, 2)]
    head = [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in modules[-5:]] == head


def test_basic_block_matches_torchvision_forward() -> None:
    block = BasicBlock(8, 16, stride=2).eval()
    x = _input((8, 12, 12))
    with torch.no_grad():
        main = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        expected = torch.relu(main + block.downsample(x))
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_inverted_residual_adds_identity_only_when_shapes_allow() -> None:
    x = _input((8, 10, 10))
    same = InvertedResidual(8, 8, stride=1, expand=6).eval()
    down = InvertedResidual(8, 16, stride=2, expand=6).eval()
    with torch.no_grad():
        assert torch.allclose(same(x), x + same.conv(x), atol=1e-6)
        assert torch.equal(down(x), down.conv(x))


def test_model_is_in_eval_mode() -> None:
    assert not any(m.training for m in _model("resnet18").modules())


def test_same_seed_same_weights_different_seed_different_weights() -> None:
    a, b, c = build("tiny", seed=3), build("tiny", seed=3), build("tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    assert not torch.equal(sa["bn1.running_mean"], sc["bn1.running_mean"])


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("tiny", seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_round_trip(tmp_path) -> None:
    source = build("tiny", seed=5)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    loaded = build("tiny", seed=0, checkpoint=str(path))
    assert not loaded.training
    x = _input((3, 32, 32))
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())


def test_checkpoint_with_missing_and_unexpected_keys_names_file_and_keys(tmp_path) -> None:
    state = build("tiny").state_dict()
    del state["fc2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="broken.pt") as info:
        build("tiny", checkpoint=path)
    assert "fc2.bias" in str(info.value) and "extra.weight" in str(info.value)


def test_checkpoint_of_another_model_reports_shape_mismatch(tmp_path) -> None:
    state = build("tiny").state_dict()
    state["fc2.weight"] = torch.zeros(5, 32)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"other\.pt.*fc2\.weight \(5, 32\) != \(10, 32\)"):
        build("tiny", checkpoint=path)


def test_missing_or_unreadable_checkpoint_names_file(tmp_path) -> None:
    with pytest.raises(ModelError, match="nope.pt"):
        build("tiny", checkpoint=tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pt"):
        build("tiny", checkpoint=garbage)


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="resnet18.*tiny") as info:
        build("resnet50")
    assert "resnet50" in str(info.value)
    with pytest.raises(ModelError):
        input_shape("resnet50")
    assert isinstance(info.value, ValueError)


def test_input_shapes() -> None:
    assert {n: input_shape(n) for n in MODEL_NAMES} == {
        "vgg16_bn": (3, 224, 224),
        "resnet18": (3, 224, 224),
        "mobilenet_v2": (3, 224, 224),
        "yolov2_tiny": (3, 416, 416),
        "tiny": (3, 32, 32),
    }


def test_layers_of_nested_sequential_uses_dotted_paths() -> None:
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
        BasicBlock(4, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    result = layers(seq)
    assert [n for n, _ in result] == ["0", "1.0", "1.1", "2", "3", "4", "5"]
    x = _input((3, 8, 8))
    with torch.no_grad():
        assert torch.equal(_run_layers(seq, x), seq(x))


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()),
        nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding="same")),
        nn.Conv2d(3, 4, 3),
    ],
)
def test_layers_rejects_what_the_runtime_cannot_split(module: nn.Module) -> None:
    with pytest.raises(ModelError):
        layers(module)


def test_layers_rejects_block_with_non_pointwise_merge() -> None:
    class Bad(Block):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.MaxPool2d(2)

        def branches(self) -> list[list[nn.Module]]:
            return [[]]

        def merge(self) -> list[nn.Module]:
            return [self.pool]

    with pytest.raises(ModelError, match="merge"):
        layers(nn.Sequential(Bad()))
