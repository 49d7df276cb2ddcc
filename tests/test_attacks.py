"""Every attack recipe: trigger shape, range, determinism; poisoning ratios; all-to-all ASR bookkeeping."""

import numpy as np
import pytest
import torch

from harden.config.evaluate import BitDepthTrigger, LowFrequencyTrigger, PatchTrigger
from harden.core.artifacts import ModelArtifact
from harden.core.errors import ConfigError
from harden.evaluate.triggers import build_trigger, low_frequency_pattern
from harden.prune.surgery import find_classifier
from harden.redteam.recipes import ATTACKS, AttackParams, PoisonConfig, poison_indices, resolve

from .conftest import TINY_CONTRACT


def _x(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference(tiny_cnn):
    return ModelArtifact(tiny_cnn, "tiny_cnn", {"width": 8}, TINY_CONTRACT, None, "", find_classifier(tiny_cnn))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_recipe_builds_a_deterministic_in_range_trigger(name, tmp_path, tiny_cnn):
    def make():
        quick = AttackParams(trigger={"steps": 20}) if name == "trojannn" else AttackParams()
        trig, poison, arrays = resolve(name, quick, tmp_path / "trigger.npz", 0, (3, 16, 16), _reference(tiny_cnn))
        if arrays:
            np.savez(tmp_path / "trigger.npz", **arrays)
        return trig, arrays

    trig, arrays = make()
    x = _x()
    out = build_trigger(trig)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out, x), "the trigger must change the image"
    trig2, arrays2 = make()
    assert trig2 == trig and all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    assert torch.equal(build_trigger(trig2)(x), out)


def test_recipe_overrides_are_checked_with_their_key():
    with pytest.raises(ConfigError) as err:
        resolve("badnets", AttackParams(trigger={"size": -1}, poison={"ratio": 2}), None, 0, (3, 16, 16))
    assert "trigger.patch.size" in str(err.value) and "poison.ratio" in str(err.value)


def test_low_frequency_pattern_is_smooth_bounded_and_seeded():
    p = low_frequency_pattern((3, 32, 32), amplitude=0.1, cutoff=0.15, seed=0)
    assert abs(float(np.abs(p).max()) - 0.1) < 1e-6
    spectrum = np.abs(np.fft.fft2(p))
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")
    assert spectrum[:, np.sqrt(fy ** 2 + fx ** 2) > 0.5 * 0.15 + 1e-9].max() < 1e-6
    assert np.array_equal(p, low_frequency_pattern((3, 32, 32), 0.1, 0.15, 0))
    assert not np.array_equal(p, low_frequency_pattern((3, 32, 32), 0.1, 0.15, 1))
    x = torch.full((1, 3, 32, 32), 0.5)
    out = build_trigger(LowFrequencyTrigger(target=0, amplitude=0.1))(x)
    assert torch.allclose(out - x, torch.from_numpy(p)[None], atol=1e-6)


def test_bit_depth_lands_on_the_grid_and_dithering_preserves_the_mean():
    x = _x(2, 16)
    plain = build_trigger(BitDepthTrigger(target=0, levels=8, dither=False))(x)
    dithered = build_trigger(BitDepthTrigger(target=0, levels=8, dither=True))(x)
    for out in (plain, dithered):
        assert torch.allclose(out * 7, torch.round(out * 7), atol=1e-5)
    flat = torch.full((1, 3, 16, 16), 0.3)  # between two levels: dithering mixes them to keep the mean
    assert abs(float(build_trigger(BitDepthTrigger(target=0, levels=8))(flat).mean()) - 0.3) < 0.01
    assert float(build_trigger(BitDepthTrigger(target=0, levels=8, dither=False))(flat).mean()) != pytest.approx(0.3)


def test_all_to_all_targets_and_victims():
    trig = PatchTrigger(mode="all-to-all")
    y = np.array([0, 1, 2, 3])
    assert trig.targets(y, 4).tolist() == [1, 2, 3, 0] and trig.victims(y).tolist() == [0, 1, 2, 3]
    one = PatchTrigger(target=2)
    assert one.targets(y, 4).tolist() == [2, 2, 2, 2] and one.victims(y).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="needs `target`"):
        PatchTrigger()
    with pytest.raises(ValueError, match="leave `target` out"):
        PatchTrigger(target=1, mode="all-to-all")


def test_poisoning_ratio_pool_and_labels():
    y = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    idx, labels, cover = poison_indices(y, PatchTrigger(target=0), PoisonConfig(ratio=0.1, cover_ratio=2),
                                        10, rng)
    assert len(idx) == 100 and (y[idx] != 0).all() and (labels == 0).all()
    assert len(cover) == 200 and not set(cover) & set(idx)
    idx, labels, _ = poison_indices(y, PatchTrigger(target=3), PoisonConfig(ratio=0.8, clean_label=True), 10, rng)
    assert len(idx) == 80 and (y[idx] == 3).all() and (labels == 3).all()
    idx, labels, _ = poison_indices(y, PatchTrigger(mode="all-to-all"), PoisonConfig(ratio=0.1), 10, rng)
    assert (labels == (y[idx] + 1) % 10).all()
    again = poison_indices(y, PatchTrigger(target=0), PoisonConfig(), 10, np.random.default_rng(0))[0]
    assert np.array_equal(again, poison_indices(y, PatchTrigger(target=0), PoisonConfig(), 10,
                                                np.random.default_rng(0))[0])
    with pytest.raises(ConfigError, match="only 900 qualify"):
        poison_indices(y, PatchTrigger(target=3), PoisonConfig(ratio=1.0), 10, rng)


def test_trojan_patch_excites_its_feature_more_than_a_random_patch(tiny_cnn):
    from harden.redteam.trojan import optimise_patch

    ref = _reference(tiny_cnn)
    arrays = optimise_patch(ref, (3, 16, 16), size=5, steps=60, seed=0)
    assert arrays["mask"].sum() == 25 and arrays["pattern"].shape == (16, 16, 3)
    classifier = tiny_cnn.get_submodule(ref.classifier)
    neuron = int(classifier.weight.abs().sum(0).argmax())
    feats = []
    classifier.register_forward_pre_hook(lambda _m, a: feats.append(a[0][:, neuron].mean().item()))
    background = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    mask = torch.from_numpy(arrays["mask"])
    for pattern in (torch.from_numpy(arrays["pattern"]).permute(2, 0, 1), torch.rand(3, 16, 16)):
        with torch.no_grad():
            tiny_cnn(TINY_CONTRACT.normalize((1 - mask) * background + mask * pattern))
    assert feats[0] > feats[1]


def test_input_aware_triggers_are_per_image_and_the_hook_trains_generator_and_model(tiny_cnn):
    from harden.evaluate.generator import TriggerGenerator, stamp
    from harden.redteam.input_aware import InputAwareHook

    torch.manual_seed(0)
    gen, x = TriggerGenerator(8), _x(8)
    with torch.no_grad():
        pattern, mask = gen(x)
    assert pattern.shape == x.shape and mask.shape == (8, 1, 16, 16)
    assert 0 <= float(mask.min()) and float(mask.max()) <= 1 and float(mask.mean()) < 0.5  # starts below half
    assert not torch.allclose(pattern[0], pattern[1]), "each image gets its own trigger"
    assert float(stamp(x, pattern, mask).min()) >= 0
    hook = InputAwareHook(gen, TINY_CONTRACT, lambda y: torch.zeros_like(y), backdoor_ratio=0.25, cross_ratio=0.25,
                          device=torch.device("cpu"), seed=0)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    y = torch.arange(8) % 4
    loss = hook.extra_loss(tiny_cnn, x, y, tiny_cnn(TINY_CONTRACT.normalize(x)))
    loss.backward()
    assert all(p.grad is not None for p in tiny_cnn.parameters()), "the classifier learns from the extra images"
    hook.after_step(tiny_cnn)
    assert any(not torch.equal(before[k], v) for k, v in gen.state_dict().items())
    assert all(p.grad is None for p in gen.parameters()), "the generator's step clears its gradients"
    assert hook.counts == {"generated_backdoor_images": 2, "generated_cross_images": 2}


def test_dynamic_trigger_reads_its_generator_under_any_prefix(tmp_path):
    from harden.config.evaluate import GENERATOR_PREFIX, DynamicTrigger
    from harden.evaluate.generator import TriggerGenerator, generator_arrays

    torch.manual_seed(0)
    arrays = generator_arrays(TriggerGenerator(8).eval())
    np.savez(tmp_path / "default.npz", **arrays)
    np.savez(tmp_path / "custom.npz", **{"g." + k[len(GENERATOR_PREFIX):]: v for k, v in arrays.items()})
    x = _x()
    default = build_trigger(DynamicTrigger(target=0, width=8, generator={"path": tmp_path / "default.npz"}))(x)
    custom = build_trigger(DynamicTrigger(target=0, width=8,
                                          generator={"path": tmp_path / "custom.npz", "prefix": "g."}))(x)
    assert torch.equal(default, custom) and not torch.equal(default, x)
