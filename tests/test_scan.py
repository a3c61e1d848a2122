import torch

from quamba_edge.models.scan import selective_scan, selective_scan_train


def _inputs(b=2, l=9, d=5, n=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, l, d, generator=g, dtype=dtype),
        torch.rand(b, l, d, generator=g, dtype=dtype) * 0.5,
        -torch.rand(d, n, generator=g, dtype=dtype) * 2,
        torch.randn(b, l, n, generator=g, dtype=dtype),
        torch.randn(b, l, n, generator=g, dtype=dtype),
        torch.randn(d, generator=g, dtype=dtype),
    ]


def _loop_reference(u, delta, A, B, C, D, h):
    """The recurrence written out one scalar step at a time."""
    b, l, d = u.shape
    y = torch.zeros_like(u)
    for t in range(l):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        y[:, t] = (h * C[:, t, None, :]).sum(-1) + D * u[:, t]
    return y, h


def test_scan_matches_the_recurrence_and_chunking_does_not_matter():
    u, delta, A, B, C, D = _inputs()
    h0 = torch.randn(2, 5, 4, dtype=torch.float64)
    y_ref, h_ref = _loop_reference(u, delta, A, B, C, D, h0)
    for chunk in (1, 4, 128):
        y, h = selective_scan(u, delta, A, B, C, D, h0, chunk=chunk)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


def test_training_scan_has_the_same_values_and_gradients():
    args = [a.requires_grad_() for a in _inputs(seed=1)]
    y_ref = selective_scan(*args)[0]
    y = selective_scan_train(*args)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, args, g), torch.autograd.grad(y_ref, args, g)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(selective_scan_train, [a.detach().requires_grad_() for a in _inputs(l=5)])


def test_in_place_inference_path_equals_the_differentiable_one():
    u, delta, A, B, C, D = _inputs(l=70, seed=2)
    h0 = torch.randn(2, 5, 4, dtype=torch.float64)
    y_ref, h_ref = _loop_reference(u, delta, A, B, C, D, h0)
    with torch.no_grad():
        for chunk in (1, 16, 64):
            y, h = selective_scan(u, delta, A, B, C, D, h0, chunk=chunk)
            torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
