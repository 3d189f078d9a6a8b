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

    assert INFER.refine_split() == (60, 200) and INFER.refine_split(0) == (0, 0)
    assert INFER.refine_split(1) == (1, 0)
    defaults = inspect.signature(refine).parameters
    assert (defaults["latent_steps"].default, defaults["decoder_steps"].default) == INFER.refine_split()
    assert DEFAULT_REFINE_STEPS == INFER.refine_steps  # the CLI's default, restated client-side
    assert refine_steps(DEFAULT_REFINE_STEPS) == {"latent_steps": 60, "decoder_steps": 200}


# ------------------------------------------------------------- the settings' one declaration


def test_every_setting_is_declared_once_with_its_flag_and_path() -> None:
    from atlas_core.config import training_settings

    settings = training_settings()
    by_name = {s.name: s for s in settings}
    assert len(by_name) == len(settings)  # no flat name twice
    assert list(by_name) == list(TrainConfig.cpu().flat())  # one order: the stored one
    flags = [s.flag for s in settings if s.flag]
    assert len(set(flags)) == len(flags)
    assert (by_name["n_patches"].flag, by_name["n_points"].flag, by_name["augment_scale"].flag) == \
        ("--patches", "--points", "--augment-scale")
    assert (by_name["n_patches"].path, by_name["augment_rotate"].path, by_name["epochs"].path) == \
        ("model.n_patches", "augment.rotate", "epochs")
    assert (by_name["keep_best"].off_flag, by_name["augment_rotate"].off_flag) == ("--keep-last", "--no-augment-rotate")
    assert (by_name["lr"].kind, by_name["template"].kind, by_name["keep_best"].kind) == (float, str, bool)
    # Settings no command offers: no flag, no help.
    assert {s.name for s in settings if not s.flag} == {"activation", "lr_decay_at", "device", "split"}
    # Every flat name reaches its own field, and nothing else.
    for setting in settings:
        value = {int: 7, float: 0.5, str: "sphere", bool: True, tuple: (0.5,)}[setting.kind]
        changed = TrainConfig.cpu().with_overrides(**{setting.name: value})
        assert changed.flat()[setting.name] == value
        assert {k for k, v in changed.flat().items() if v != TrainConfig.cpu().flat()[k]} <= {setting.name}


def test_the_architecture_includes_the_activation() -> None:
    """The weights were trained through their nonlinearity: a fine-tune keeps it."""
    from atlas_core.config import training_settings

    assert [s.name for s in training_settings() if s.architecture] == \
        ["n_patches", "template", "bottleneck", "hidden", "layers", "activation"]
    assert TrainConfig.cpu().architecture() == {"n_patches": 10, "template": "square", "bottleneck": 256,
                                                "hidden": 128, "layers": 2, "activation": "relu"}


def test_base_model_keys_stay_as_registered() -> None:
    """A base pre-trained before the declaration keeps being found (the key reads the architecture)."""
    from atlas_core.families import PretrainRecipe

    assert PretrainRecipe().key(TrainConfig.cpu().architecture()) == "bf73e28a40746ff3"
    assert PretrainRecipe().key(TrainConfig.reference().architecture()) == "d7fc560fa5e33fa0"


def test_flatten_gives_stored_paths_in_stored_order() -> None:
    from atlas_core.config import as_flags, flatten

    stored = TrainConfig.cpu().to_dict()
    flat = flatten(stored)
    assert list(flat)[:3] == ["model.n_patches", "model.template", "model.bottleneck"]
    assert flat["augment.scale"] == 0.0 and flat["lr_decay_at"] == list(TrainConfig.cpu().lr_decay_at)
    assert flatten({"lr": 1e-3, "model": {"dropout": 0.5}}) == {"lr": 1e-3, "model.dropout": 0.5}  # any version's
    assert as_flags({"n_patches": 5, "template": "sphere", "device": "cpu"}) == "--patches 5 --template sphere device cpu"
