"""TrainConfig: the presets are the one source of defaults; stored configs never lose a key."""

from __future__ import annotations

import pytest

from atlas_core.config import ConfigError, TrainConfig


def test_reference_preset_is_the_paper() -> None:
    ref = TrainConfig.reference()
    assert (ref.model.n_patches, ref.model.n_points, ref.model.bottleneck, ref.model.hidden) == (25, 2500, 1024, 512)
    assert (ref.epochs, ref.batch_size, ref.lr, ref.model.layers) == (150, 32, 1e-3, 2)
    assert ref.lr_milestones() == [120, 140, 145]


def test_cpu_preset_is_small() -> None:
    cpu = TrainConfig.cpu()
    assert (cpu.model.n_patches, cpu.model.n_points, cpu.model.bottleneck, cpu.model.hidden) == (10, 1000, 256, 128)
    assert (cpu.epochs, cpu.batch_size, cpu.checkpoint_every) == (30, 16, 5)
    cpu.validate()


def test_overrides_by_flat_name_reach_every_part() -> None:
    config = TrainConfig.cpu().with_overrides(epochs=3, n_patches=4, augment_scale=0.2, keep_best=False)
    assert (config.epochs, config.model.n_patches, config.augment.scale, config.keep_best) == (3, 4, 0.2, False)
    assert TrainConfig.cpu().model.n_patches == 10  # a copy: the preset is untouched
    assert set(TrainConfig.cpu().flat()) >= {"epochs", "n_patches", "template", "augment_rotate", "patience"}


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown training setting.*n_patchs"):
        TrainConfig.cpu().with_overrides(n_patchs=3)


def test_round_trip_and_unknown_stored_keys_are_refused() -> None:
    config = TrainConfig.cpu().with_overrides(augment_rotate=True)
    assert TrainConfig.from_dict(config.to_dict()) == config
    stored = config.to_dict()
    stored["model"]["dropout"] = 0.5
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig.from_dict(stored)
    stored = {**config.to_dict(), "warmup": 3}
    with pytest.raises(ConfigError, match="warmup"):
        TrainConfig.from_dict(stored)


@pytest.mark.parametrize("lr", [0.0, -1.0, float("inf"), float("nan")])
def test_learning_rate_must_be_a_positive_number(lr: float) -> None:
    with pytest.raises(ValueError, match="learning rate"):
        TrainConfig.cpu().with_overrides(lr=lr).validate()


def test_inference_settings_are_declared_once() -> None:
    import inspect

    from atlas_core.config import INFER
    from atlas_core.refine import refine
    from orchestrator.jobs import DEFAULT_REFINE_STEPS, refine_steps

    assert INFER.refine_split() == (60, 100) and INFER.refine_split(0) == (0, 0)
    assert INFER.refine_split(1) == (1, 0)
    defaults = inspect.signature(refine).parameters
    assert (defaults["latent_steps"].default, defaults["decoder_steps"].default) == INFER.refine_split()
    assert DEFAULT_REFINE_STEPS == INFER.refine_steps  # the CLI's default, restated client-side
    assert refine_steps(DEFAULT_REFINE_STEPS) == {"latent_steps": 60, "decoder_steps": 100}
