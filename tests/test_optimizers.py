"""mlrsnet_hf.optimizers: what the library reads off an optimizer, through accelerate's wrapper or not."""

import torch
from accelerate import Accelerator

from mlrsnet_hf.optimizers import is_lr_linear, is_sgd, optimizer_name, takes_tensor_lr, tensor_lr_dtype, unwrap


def test_an_accelerate_wrapped_optimizer_reads_as_the_torch_optimizer_it_holds():
    params = [torch.nn.Parameter(torch.zeros(3))]
    for inner, sgd, linear in (
        (torch.optim.SGD(params, lr=0.1), True, True),
        (torch.optim.AdamW(params, lr=1e-3), False, True),
        (torch.optim.LBFGS(params), False, False),  # its step searches the LR: not linear in it
    ):
        wrapped = Accelerator(cpu=True).prepare_optimizer(inner)
        assert wrapped is not inner
        for optimizer in (inner, wrapped):
            assert unwrap(optimizer) is inner
            assert optimizer_name(optimizer) == type(inner).__name__
            assert (is_sgd(optimizer), is_lr_linear(optimizer)) == (sgd, linear)


def test_only_fused_or_capturable_steps_take_a_device_lr():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not takes_tensor_lr(torch.optim.SGD(params, lr=0.1))
    assert tensor_lr_dtype(torch.optim.SGD(params, lr=0.1)) is None
    fused = Accelerator(cpu=True).prepare_optimizer(torch.optim.SGD(params, lr=0.1, fused=True))
    assert takes_tensor_lr(fused) and tensor_lr_dtype(fused) == torch.float32
    double = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    assert tensor_lr_dtype(torch.optim.Adam(double, lr=1e-3, capturable=True)) == torch.float64
    assert tensor_lr_dtype(torch.optim.Adam(params, lr=1e-3, capturable=True)) == torch.float32
    assert not takes_tensor_lr(torch.optim.RMSprop(params, lr=1e-3))
