"""Tests for trainables.convnets: published parameter counts, shapes, training, modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrbs.trainables.convnets import cifar_resnet, n_parameters, resnet20, resnet56, vgg11

# VGG11-BN, CIFAR variant (kuangliu/pytorch-cifar), 3 input channels, 10 classes, by hand.
# Conv k x k from c_in to c_out with bias: 9 * c_in * c_out + c_out; BatchNorm2d(c): 2c.
#   conv  3->64 :     1,728 +  64 =     1,792   BN   128
#   conv 64->128:    73,728 + 128 =    73,856   BN   256
#   conv128->256:   294,912 + 256 =   295,168   BN   512
#   conv256->256:   589,824 + 256 =   590,080   BN   512
#   conv256->512: 1,179,648 + 512 = 1,180,160   BN 1,024
#   conv512->512: 2,359,296 + 512 = 2,359,808   BN 1,024   (x3)
#   convs: 1,792 + 73,856 + 295,168 + 590,080 + 1,180,160 + 3 * 2,359,808 = 9,220,480
#   BN:    128 + 256 + 512 + 512 + 4 * 1,024                                =     5,504
#   Linear(512, 10): 5,120 + 10                                             =     5,130
#   total                                                                   = 9,231,114
VGG11_BN_PARAMS = 9_231_114
VGG11_NOBN_PARAMS = 9_231_114 - 5_504
# He et al. 2016 / akamaster/pytorch_resnet_cifar10 (option A, 10 classes).
RESNET56_PARAMS = 853_018
RESNET20_PARAMS = 269_722
RESNET110_PARAMS = 1_727_962


def test_vgg11_parameter_count():
    assert n_parameters(vgg11()) == VGG11_BN_PARAMS
    assert n_parameters(vgg11(batch_norm=False)) == VGG11_NOBN_PARAMS


def test_resnet_parameter_counts():
    assert n_parameters(resnet56()) == RESNET56_PARAMS
    assert n_parameters(resnet20()) == RESNET20_PARAMS
    assert n_parameters(cifar_resnet(110)) == RESNET110_PARAMS
    assert n_parameters(cifar_resnet(56)) == RESNET56_PARAMS


def test_resnet56_structure():
    m = resnet56()
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert len(convs) + len(linears) == 56  # 1 + 3 * 9 * 2 convs + 1 linear
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [9, 9, 9]
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize("depth", [0, 7, 9, 21])
def test_cifar_resnet_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match="6n"):
        cifar_resnet(depth)


def test_width_mult_scales_channels():
    small = vgg11(width_mult=0.125)
    convs = [x.out_channels for x in small.modules() if isinstance(x, nn.Conv2d)]
    assert convs == [8, 16, 32, 32, 64, 64, 64, 64]
    assert small.classifier.in_features == 64
    r = resnet56(width_mult=0.5)
    assert r.linear.in_features == 32
    assert n_parameters(small) < n_parameters(vgg11()) // 50


def _builders():
    return [
        ("vgg11", lambda **kw: vgg11(**kw)),
        ("resnet56", lambda **kw: resnet56(**kw)),
        ("resnet8", lambda **kw: cifar_resnet(8, **kw)),
    ]


@pytest.mark.parametrize("name,build", _builders())
def test_forward_shape_cifar(name, build):
    m = build(n_classes=10).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,build", _builders())
@pytest.mark.parametrize("hw", [(8, 8), (9, 13), (16, 16)])
def test_forward_shape_small_inputs(name, build, hw):
    m = build(n_classes=7, in_channels=1, width_mult=0.125)
    out = m(torch.randn(4, 1, *hw))  # train mode: BN batch statistics
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()


def test_vgg_skips_pools_that_do_not_fit():
    m = vgg11(in_channels=1, width_mult=0.125)
    x = torch.randn(2, 1, 8, 8)
    x = m.features(x)
    assert x.shape[-2:] == (1, 1)  # 8 -> 4 -> 2 -> 1, last two pools skipped


@pytest.mark.parametrize("name,build", _builders())
def test_sgd_steps_reduce_loss(name, build):
    torch.manual_seed(0)
    m = build(n_classes=3, in_channels=1, width_mult=0.25)
    x = torch.randn(12, 1, 8, 8)
    y = torch.arange(12) % 3
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    m.train()
    first = loss_fn(m(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
    last = loss_fn(m(x), y).item()
    assert last < 0.5 * first


@pytest.mark.parametrize("name,build", _builders())
def test_train_eval_modes(name, build):
    torch.manual_seed(0)
    m = build(n_classes=4, in_channels=1, width_mult=0.125)
    x = torch.randn(6, 1, 8, 8)
    m.train()
    m(x)  # updates BN running statistics
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bns and all(int(b.num_batches_tracked) == 1 for b in bns)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
        single = m(x[:1])
    assert torch.equal(a, b)
    # Eval mode uses running statistics, so an example's output does not depend on its batch.
    assert torch.allclose(single, a[:1], atol=1e-5)
    assert all(int(b.num_batches_tracked) == 1 for b in bns)


def test_bad_arguments():
    with pytest.raises(ValueError):
        vgg11(width_mult=0)
    with pytest.raises(ValueError):
        resnet56(n_classes=0)
