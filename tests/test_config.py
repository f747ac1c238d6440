import pytest

from selfsup.config import PretrainConfig, resolve
from selfsup.settings import ConfigError, from_dict, load_yaml


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'batchsize'"):
        from_dict(PretrainConfig, {"batchsize": 3})


@pytest.mark.parametrize("values, name", [
    ({"epochs": 0}, "epochs"), ({"epochs": -1}, "epochs"),
    ({"method": "simclr", "method_args": {"temperature": 0.0}}, "temperature"),
    ({"method": "simclr", "method_args": {"temperature": -0.5}}, "temperature"), ({"method": "moco"}, "method"),
    ({"batch_size": "big"}, "batch_size"),
    ({"epochs": 2.5}, "epochs"), ({"online_probe": "yes"}, "online_probe"), ({"width": 0}, "width"),
    ({"method_args": {"predictor_lr_multiplier": 0}}, "predictor_lr_multiplier"),
    ({"lars_trust_coefficient": 0}, "lars_trust_coefficient"), ({"lars_clip": "on"}, "lars_clip"),
    ({"crop_size": 4}, "crop_size"),
])
def test_bad_values_are_named(values, name):
    with pytest.raises(ConfigError, match=name):
        from_dict(PretrainConfig, values)


def test_types_are_converted_where_lossless():
    config = from_dict(PretrainConfig, {"method": "simclr", "method_args": {"temperature": 1}, "base_lr": 2,
                                        "image_size": None})
    assert isinstance(config.method_args.temperature, float) and config.method_args.temperature == 1.0
    assert config.image_size is None


def test_paper_defaults_per_method():
    simclr, byol = PretrainConfig(method="simclr"), PretrainConfig(method="byol")
    assert (resolve(simclr).base_lr, resolve(simclr).weight_decay, simclr.method_args.projection_hidden_dim,
            simclr.method_args.projection_dim) == (0.3, 1e-6, 2048, 128)
    assert (resolve(byol).base_lr, resolve(byol).weight_decay, byol.method_args.projection_hidden_dim,
            byol.method_args.projection_dim) == (0.2, 1.5e-6, 4096, 256)
    assert byol.method_args.momentum_base == 0.996 and simclr.method_args.temperature == 0.5


def test_yaml_is_loaded_safely(tmp_path):
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("method: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(recipe)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_yaml(missing)


def test_every_recipe_in_configs_is_valid():
    from pathlib import Path

    root = Path(__file__).parents[1]
    recipes = sorted((root / "configs").glob("pretrain_*.yaml")) + [root / "selfsup" / "recipes" / "default.yaml"]
    assert len(recipes) > 1, "configs/ has no pretraining recipes"
    for recipe in recipes:
        from_dict(PretrainConfig, load_yaml(recipe), source=str(recipe))
