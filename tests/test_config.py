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
    simclr = PretrainConfig(method="simclr", optimizer="lars")
    byol = PretrainConfig(method="byol", optimizer="lars")
    assert (resolve(simclr).base_lr, resolve(simclr).weight_decay, simclr.method_args.projection_hidden_dim,
            simclr.method_args.projection_dim) == (0.3, 1e-6, 2048, 128)
    assert (resolve(byol).base_lr, resolve(byol).weight_decay, byol.method_args.projection_hidden_dim,
            byol.method_args.projection_dim) == (0.2, 1.5e-6, 4096, 256)
    assert byol.method_args.momentum_base == 0.996 and simclr.method_args.temperature == 0.5


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_auto_optimizer_takes_the_short_run_recipe_below_a_batch_of_1024(method):
    from selfsup.methods import method_class

    cls = method_class(method)
    small = resolve(PretrainConfig(method=method, batch_size=256))
    assert PretrainConfig().optimizer == "auto"
    assert (small.optimizer, small.base_lr, small.weight_decay) == cls.short_run_optimizer
    assert "1024" in small.reason and "short-run" in small.reason
    large = resolve(PretrainConfig(method=method, batch_size=1024))
    assert (large.optimizer, large.base_lr, large.weight_decay) == ("lars", *cls.optimizer_defaults["lars"])
    assert "paper" in large.reason
    # Rates given by the user win over auto's; an explicit optimizer is never replaced.
    chosen = resolve(PretrainConfig(method=method, batch_size=256, base_lr=0.5, weight_decay=1e-5))
    assert (chosen.optimizer, chosen.base_lr, chosen.weight_decay) == (cls.short_run_optimizer[0], 0.5, 1e-5)
    explicit = resolve(PretrainConfig(method=method, batch_size=256, optimizer="lars"))
    assert (explicit.optimizer, explicit.base_lr) == ("lars", cls.optimizer_defaults["lars"][0])
    # Chosen on ResNets and on a ViT: another library backbone keeps the paper's recipe, and says why.
    other = resolve(PretrainConfig(method=method, batch_size=256, backbone="torchvision:convnext_tiny"))
    assert (other.optimizer, other.base_lr) == ("lars", cls.optimizer_defaults["lars"][0])
    assert "no short-run recipe of" in other.reason and "convnext_tiny" in other.reason


@pytest.mark.parametrize("backbone",
                         ["timm:vit_tiny_patch16_224", "torchvision:vit_b_16", "timm:deit_small_patch16_224"])
def test_auto_optimizer_on_a_vit(backbone):
    from selfsup.config import backbone_family
    from selfsup.methods import METHODS

    assert backbone_family(backbone) == "vit"
    for name, cls in METHODS.items():
        small = resolve(PretrainConfig(method=name, batch_size=256, backbone=backbone))
        large = resolve(PretrainConfig(method=name, batch_size=1024, backbone=backbone))
        paper = cls.paper_vit_optimizer or cls.paper_optimizer  # DINO's and MoCo v3's papers have a ViT recipe
        assert (large.optimizer, large.base_lr, large.weight_decay) == (paper, *cls.optimizer_defaults[paper]), name
        expected = cls.short_run_vit_optimizer or (paper, *cls.optimizer_defaults[paper])
        assert (small.optimizer, small.base_lr, small.weight_decay) == expected, name
        assert ("for ViTs" in small.reason) == (cls.short_run_vit_optimizer is not None
                                                or cls.paper_vit_optimizer is not None), name
    assert resolve(PretrainConfig(method="dino", backbone=backbone)).optimizer == "adamw"
    assert resolve(PretrainConfig(method="dino")).optimizer == "sgd"  # its ResNet-50 recipe


def test_backbone_families():
    from selfsup.config import backbone_family

    assert backbone_family("resnet50") == "resnet"
    assert backbone_family("timm:deit3_small_patch16_224") == "vit"
    for other in ("torchvision:resnet18", "timm:convnext_atto", "torchvision:swin_t", "timm:levit_128"):
        assert backbone_family(other) is None, other


def test_auto_optimizer_is_the_papers_for_methods_without_a_short_run_recipe():
    from selfsup.methods import METHODS

    for name, cls in METHODS.items():
        assert cls.paper_optimizer in cls.optimizer_defaults, name
        if cls.short_run_optimizer is None:
            auto = resolve(PretrainConfig(method=name, batch_size=256))
            assert (auto.optimizer, auto.base_lr, auto.weight_decay) == (
                cls.paper_optimizer, *cls.optimizer_defaults[cls.paper_optimizer]), name
    assert resolve(PretrainConfig(method="moco-v2")).optimizer == "sgd"  # MoCo's own recipe is SGD


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
