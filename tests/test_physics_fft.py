"""The shift-free centred FFTs and coil operators of utils.physics against the plain shift definitions."""
import pytest
import torch

from utils import physics as P

SHAPES = [(2, 3, 8, 6), (2, 3, 10, 12), (2, 3, 7, 9), (2, 3, 8, 9), (2, 3, 9, 6), (1, 1, 2, 2)]


def _ref(x, inverse=False, dim=(-2, -1)):
    """Centred orthonormal FFT by its definition: fftshift(F(ifftshift(x)))."""
    f = torch.fft.ifft2 if inverse else torch.fft.fft2
    return torch.fft.fftshift(f(torch.fft.ifftshift(x, dim=dim), dim=dim, norm="ortho"), dim=dim)


def _crandn(*shape, seed=0, dtype=torch.complex128):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _close(a, b, rtol=1e-12):
    err = (a - b).abs().max() / b.abs().max()
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_fft2c_ifft2c_equal_shift_definition(shape):
    x = _crandn(*shape)
    _close(P.fft2c(x), _ref(x))
    _close(P.ifft2c(x), _ref(x, inverse=True))
    # the orthonormal scaling is unchanged: sqrt(H W) times the unnormalised centred FFT's
    h, w = shape[-2:]
    plain = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1))), dim=(-2, -1))
    _close(P.fft2c(x) * (h * w) ** 0.5, plain)
    assert torch.allclose(P.fft2c(x).norm(), x.norm(), rtol=1e-12)
    assert torch.allclose(P.ifft2c(P.fft2c(x)), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 16, 12), (3, 15, 12)])
def test_fft2c_complex64(shape):
    x = _crandn(*shape, dtype=torch.complex64)
    out = P.fft2c(x)
    assert out.dtype == torch.complex64
    _close(out, _ref(x.to(torch.complex128)).to(torch.complex64), rtol=1e-6)


def test_other_dims_use_the_exact_path():
    x = _crandn(8, 6, 3)
    _close(P.fft2c(x, dim=(0, 1)), _ref(x, dim=(0, 1)))
    _close(P.ifft2c(x, dim=(0, 1)), _ref(x, inverse=True, dim=(0, 1)))


def _ref_expand(image, sens):
    return _ref(sens * image)


def _ref_reduce(k, sens):
    return (sens.conj() * _ref(k, inverse=True)).sum(dim=-3, keepdim=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_kind", ["line", "2d"])
def test_coil_operators_equal_shift_definition(shape, mask_kind):
    b, c, h, w = shape
    sens, image, k = _crandn(*shape, seed=1), _crandn(b, 1, h, w, seed=2), _crandn(*shape, seed=3)
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(w, generator=g) > 0.5 if mask_kind == "line" else torch.rand(b, 1, h, w, generator=g) > 0.5
    _close(P.sens_expand(image, sens), _ref_expand(image, sens))
    _close(P.sens_reduce(k, sens), _ref_reduce(k, sens))
    op = P.SenseOperator(sens, mask)
    m = P.as_mask(mask, sens)
    _close(op(image), _ref_expand(image, sens) * m)
    _close(op.adjoint(k), _ref_reduce(k * m, sens))
    _close(op.normal(image), _ref_reduce(_ref_expand(image, sens) * m, sens))
    # an image with more elements than the maps (maps broadcast over a batch of images)
    many = _crandn(3, b, c, h, w, seed=5)
    _close(P.sens_expand(many, sens), _ref_expand(many, sens))
    _close(P.SenseOperator(sens, mask).normal(many), _ref_reduce(_ref_expand(many, sens) * m, sens))


@pytest.mark.parametrize("hw", [(4, 6), (5, 4)])
def test_gradients_flow_and_match(hw):
    h, w = hw
    sens = _crandn(1, 2, h, w, seed=1)
    mask = torch.tensor([1, 0, 1, 1, 0, 1][:w]).bool()
    for fn, ref in [
        (P.fft2c, _ref),
        (P.ifft2c, lambda x: _ref(x, inverse=True)),
        (lambda x: P.sens_expand(x[:, :1], sens), lambda x: _ref_expand(x[:, :1], sens)),
        (lambda x: P.sens_reduce(x, sens), lambda x: _ref_reduce(x, sens)),
        (lambda x: P.SenseOperator(sens, mask).normal(x[:, :1]),
         lambda x: _ref_reduce(_ref_expand(x[:, :1], sens) * mask, sens)),
    ]:
        x = _crandn(1, 2, h, w, seed=7).requires_grad_()
        assert torch.autograd.gradcheck(fn, (x,))
        weights = _crandn(*fn(x).shape, seed=8)
        (g,) = torch.autograd.grad((fn(x) * weights).real.sum(), x)
        (g_ref,) = torch.autograd.grad((ref(x) * weights).real.sum(), x)
        _close(g, g_ref)


def test_board_built_in_inference_mode_serves_autograd():
    x = _crandn(2, 12, 14, seed=9, dtype=torch.complex64)
    P._CHECKERBOARDS.clear()
    with torch.inference_mode():
        P.fft2c(x)  # caches the board inside inference mode
    y = x.clone().requires_grad_()
    P.fft2c(y).abs().sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
