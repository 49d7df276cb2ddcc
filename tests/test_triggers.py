import numpy as np
import pytest
import torch

from harden.config.evaluate import BlendTrigger, PatchTrigger, SineTrigger, WarpTrigger
from harden.core.errors import DataError
from harden.evaluate.triggers import build_trigger


def _x(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_patch_is_the_zoo_badnets_square():
    x = _x()
    out = build_trigger(PatchTrigger(target=0, size=3, value=1.0, position="bottom-right", margin=1))(x)
    assert torch.all(out[..., 28:31, 28:31] == 1.0)
    changed = (out != x).any(dim=(0, 1))
    assert changed[:28].sum() == 0 and changed[:, :28].sum() == 0 and changed[31].sum() == 0
    assert torch.equal(x, _x())  # input untouched


def test_blend_formula_range_and_shape_check(tmp_path):
    pattern = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    np.savez(tmp_path / "t.npz", pattern=pattern)
    trig = build_trigger(BlendTrigger(target=0, alpha=0.2, pattern={"path": tmp_path / "t.npz", "key": "pattern"}))
    x = _x()
    expected = 0.8 * x + 0.2 * torch.from_numpy(pattern).permute(2, 0, 1)
    assert torch.allclose(trig(x), expected, atol=1e-6)
    with pytest.raises(DataError, match="shape"):
        trig(_x(size=16))
    np.savez(tmp_path / "bad.npz", pattern=pattern * 3)
    with pytest.raises(DataError, match="outside"):
        build_trigger(BlendTrigger(target=0, pattern={"path": tmp_path / "bad.npz", "key": "pattern"}))
    with pytest.raises(DataError, match="no array 'nope'"):
        build_trigger(BlendTrigger(target=0, pattern={"path": tmp_path / "t.npz", "key": "nope"}))


def test_warp_identity_grid_is_a_no_op_and_output_in_range(tmp_path):
    np.savez(tmp_path / "g.npz", noise_grid=np.zeros((1, 32, 32, 2), np.float32))
    trig = build_trigger(WarpTrigger(target=0, s=0.5, grid={"path": tmp_path / "g.npz", "key": "noise_grid"}))
    x = _x()
    assert torch.allclose(trig(x), x, atol=1e-5)
    np.savez(tmp_path / "g2.npz", noise_grid=np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 2)).astype(np.float32))
    trig = build_trigger(WarpTrigger(target=0, s=0.5, grid={"path": tmp_path / "g2.npz", "key": "noise_grid"}))
    out = trig(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    assert torch.equal(out, trig(x))


def test_sine_is_horizontal_and_deterministic():
    x = torch.full((2, 3, 32, 32), 0.5)
    out = build_trigger(SineTrigger(target=0, delta=20 / 255, freq=6))(x)
    assert torch.allclose(out[:, :, 0], out[:, :, 17])  # same on every row
    assert abs(float((out - x).abs().max()) - 20 / 255) < 1e-3


def test_out_of_range_trigger_parameters_are_config_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PatchTrigger(target=0, value=2.0)
    with pytest.raises(ValidationError):
        BlendTrigger(target=0, alpha=0, pattern={"path": "x", "key": "k"})
    with pytest.raises(DataError, match="does not fit"):
        build_trigger(PatchTrigger(target=0, size=20, margin=1))(torch.rand(1, 3, 16, 16))
