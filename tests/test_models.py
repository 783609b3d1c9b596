"""The six models against docs/STUDY.md: exact sizes, shapes, structure, init, precision modes, FLOP facts."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models import build_model, model_entry, model_names
from models.facts import ModelFacts, facts_table, model_facts

SPEC_PARAMS = {  # docs/STUDY.md's parameter table: (1 channel, 3 channels)
    "vgg16": (134_300_362, 134_301_514),
    "vgg16_improved": (83_977_162, 83_978_314),
    "resnet18": (11_175_370, 11_181_642),
    "resnet18_improved": (11_246_794, 11_247_946),
    "inception_v1": (5_603_882, 5_610_154),
    "inception_v1_improved": (5_675_306, 5_676_458),
}
MODEL_NAMES = tuple(SPEC_PARAMS)  # the study's six, which the registry lists first, in its order
STEM_GEOMETRY = [(2, 3), (1, 0), (1, 0)]  # (stride, padding) of the three 3x3 convs of the improved stems


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, 64, 64, generator=torch.Generator().manual_seed(seed))


def kaiming_fan_out_std(conv: nn.Conv2d) -> float:
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


def pytorch_default_std(conv: nn.Conv2d) -> float:
    """Std of nn.Conv2d's own kaiming_uniform_(a=sqrt(5)) init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return 1.0 / math.sqrt(3.0 * fan_in)


def assert_std(weight: torch.Tensor, expected: float, what: str) -> None:
    actual = weight.detach().float().std().item()
    assert actual == pytest.approx(expected, rel=0.15), f"{what}: std {actual:.4g}, expected {expected:.4g}"


def meta_model(name: str, in_channels: int = 1) -> nn.Module:
    """Structure without weights: layer facts and map sizes need no memory or init."""
    with torch.device("meta"):
        return build_model(name, in_channels)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_1ch(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    """One fresh 1-channel build per model, shared by the read-only tests (pytest runs them grouped)."""
    torch.manual_seed(0)
    return request.param, build_model(request.param, in_channels=1)


def test_registry_lists_the_studys_models_first_with_their_metadata() -> None:
    assert model_names()[: len(MODEL_NAMES)] == MODEL_NAMES
    for name in MODEL_NAMES:
        entry = model_entry(name)
        assert entry.improves == (name.removesuffix("_improved") if name.endswith("_improved") else None)
        assert set(entry.study) == {"mnist", "cifar10"} and entry.description
    assert model_entry("vgg16").fast_lr_scale == 0.1 and model_entry("resnet18").fast_lr_scale == 1.0
    assert model_entry("resnet18_improved").study["cifar10"].test_acc_pct == 81.87


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_spec(name: str, channels: int) -> None:
    assert n_params(meta_model(name, channels)) == SPEC_PARAMS[name][channels == 3]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_num_classes_sets_the_output_width(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name, 3, num_classes=7).eval()
        assert model(torch.empty(1, 3, 64, 64)).shape == (1, 7)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg19'") as error:
        build_model("vgg19", 3)
    for name in MODEL_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_in_channels_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        build_model("resnet18", bad)  # type: ignore[arg-type]


def test_logits_in_train_and_eval_mode_1ch(model_1ch: tuple[str, nn.Module]) -> None:
    _, model = model_1ch
    for training in (True, False):
        model.train(training)
        out = model(images(2, 1))
        assert type(out) is torch.Tensor and out.shape == (2, 10)  # GoogLeNet must not return GoogLeNetOutputs
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sgd_step_reduces_loss_3ch(name: str) -> None:
    """An SGD step on one fixed 3-channel batch lowers its loss; dropout masks are re-seeded so only the weights change."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=3).train()
    x, y = images(2, 3), torch.tensor([3, 7])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def loss_now() -> torch.Tensor:
        torch.manual_seed(1)
        logits = model(x)
        assert logits.shape == (2, 10)
        return nn.functional.cross_entropy(logits, y)

    first = loss_now()
    first.backward()
    optimizer.step()
    with torch.no_grad():
        assert loss_now().item() < first.item()


@pytest.mark.parametrize("name", ["vgg16", "vgg16_improved"])
def test_vgg16_structure(name: str) -> None:
    model = meta_model(name)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and convs[0].in_channels == 1
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears[1:]] == [(4096, 4096), (4096, 10)]
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    if name == "vgg16":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == (7, 7)
        assert linears[0].in_features == 512 * 7 * 7
    else:
        layers = list(model.features)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):  # conv -> BN -> ReLU, every time
                assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.ReLU)
        assert isinstance(model.avgpool, nn.AdaptiveMaxPool2d) and model.avgpool.output_size == (5, 5)
        assert linears[0].in_features == 512 * 5 * 5


def assert_three_conv_stem(stem: nn.Module) -> None:
    layers = list(stem)
    assert len(layers) == 9
    for (stride, padding), conv, bn, relu in zip(STEM_GEOMETRY, layers[0::3], layers[1::3], layers[2::3]):
        assert isinstance(conv, nn.Conv2d) and conv.bias is None
        assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (stride, stride), (padding, padding))
        assert conv.out_channels == 64
        assert isinstance(bn, nn.BatchNorm2d) and bn.eps == 1e-5 and isinstance(relu, nn.ReLU)


def spatial_sizes(model: nn.Module, stem: nn.Module, pool: nn.Module) -> list[int]:
    """Input size, then the map size after each stem conv and after the following max-pool."""
    sizes: list[int] = [64]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
             for m in [*(m for m in stem if isinstance(m, nn.Conv2d)), pool]]
    with torch.no_grad():
        model.eval()(torch.empty(1, 1, 64, 64, device="meta"))
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("name", ["resnet18_improved", "inception_v1_improved"])
def test_improved_stems(name: str) -> None:
    model = meta_model(name)
    assert_three_conv_stem(model.conv1)
    assert spatial_sizes(model, model.conv1, model.maxpool if name.startswith("resnet") else model.maxpool1) == [
        64, 34, 32, 30, 15]
    if name == "resnet18_improved":  # the stem's own BN/ReLU stand in for ResNet's bn1/relu
        assert isinstance(model.bn1, nn.Identity) and isinstance(model.relu, nn.Identity)
        dropout, linear = model.fc
        assert isinstance(dropout, nn.Dropout) and dropout.p == 0.1
        assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (512, 10)
    else:
        assert (model.maxpool1.kernel_size, model.maxpool1.stride, model.maxpool1.ceil_mode) == (3, 2, True)


@pytest.mark.parametrize("name", ["inception_v1", "inception_v1_improved"])
def test_inception_v1_settings(name: str) -> None:
    model = meta_model(name)
    assert model.aux1 is None and model.aux2 is None and not model.transform_input
    assert model.dropout.p == 0.2 and (model.fc.in_features, model.fc.out_features) == (1024, 10)
    if name == "inception_v1":
        assert model.conv1.conv.in_channels == 1 and model.conv1.bn.eps == 0.001


def test_init(model_1ch: tuple[str, nn.Module]) -> None:
    """Each model's init per docs/STUDY.md; swapped-in first layers must not keep PyTorch's default init."""
    name, model = model_1ch
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    if name.startswith("inception"):  # GoogLeNet: truncated normal, std 0.01; the improved stem keeps PyTorch's default
        for conv_name, conv in convs:
            default = name == "inception_v1_improved" and conv_name.startswith("conv1.")
            assert_std(conv.weight, pytorch_default_std(conv) if default else 0.01, conv_name)
        assert_std(model.fc.weight, 0.01, "fc")
        return
    for conv_name, conv in convs:  # VGG's and ResNet's torchvision init, and the spec's improved init
        assert_std(conv.weight, kaiming_fan_out_std(conv), conv_name)
        assert conv.bias is None or torch.all(conv.bias == 0)
    if name != "resnet18":  # torchvision leaves ResNet's Linear at PyTorch's default
        for linear in (m for m in model.modules() if isinstance(m, nn.Linear)):
            assert_std(linear.weight, 0.01, "linear")
            assert torch.all(linear.bias == 0)


def test_channels_last_bf16_autocast_cpu(model_1ch: tuple[str, nn.Module]) -> None:
    _, model = model_1ch
    model = model.to(memory_format=torch.channels_last).eval()
    x = images(2, 1).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.cuda
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_fp16_autocast_cuda(name: str) -> None:
    model = build_model(name, 3).cuda().to(memory_format=torch.channels_last).train()
    x = images(2, 3).cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.float16
    out.float().sum().backward()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_traces_into_one_graph_without_breaks(name: str) -> None:
    """What torch.compile (and CUDA graphs under reduce-overhead) need to capture the whole forward pass;
    traced on the meta device, so no compilation is paid here (the harness's compiled run is tested in
    test_extending.py)."""
    with torch.device("meta"):
        model = build_model(name, 3).train()
        x = torch.empty(2, 3, 64, 64)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_facts(name: str) -> None:
    facts = model_facts(name, 3)
    assert isinstance(facts, ModelFacts) and facts.params == SPEC_PARAMS[name][1]
    assert facts.forward_gflops > 0
    # Backward costs about twice the forward (a bit less: the input needs no gradient).
    assert 2.5 * facts.forward_gflops < facts.train_gflops <= 3.0 * facts.forward_gflops
    assert model_facts(name, 3) is facts  # cached: the runner asks once per run


def test_flops_ordered_sensibly() -> None:
    vgg, resnet = model_facts("vgg16", 3), model_facts("resnet18", 3)
    assert vgg.forward_gflops > 5 * resnet.forward_gflops
    # The improved stems keep more resolution, so they cost more than the 7x7/2 stems.
    assert model_facts("resnet18_improved", 3).forward_gflops > resnet.forward_gflops
    assert model_facts("inception_v1_improved", 3).forward_gflops > model_facts("inception_v1", 3).forward_gflops
    # A 4x larger image costs about 4x the conv work.
    assert 3.0 < model_facts("resnet18", 3, image_size=128).forward_gflops / resnet.forward_gflops < 4.5


def test_facts_table() -> None:
    table = facts_table()
    assert list(table["model"])[: len(MODEL_NAMES)] == list(MODEL_NAMES)
    assert list(table["params (1 ch)"]) == [SPEC_PARAMS[n][0] for n in MODEL_NAMES]
    assert list(table["params (3 ch)"]) == [SPEC_PARAMS[n][1] for n in MODEL_NAMES]
    for column in ("forward GFLOPs (1 ch)", "train GFLOPs (1 ch)", "forward GFLOPs (3 ch)", "train GFLOPs (3 ch)"):
        assert (table[column] > 0).all()
    assert "| vgg16 " in table.to_markdown(index=False)
