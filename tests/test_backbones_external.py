"""Backbones from torchvision and timm (selfsup/models/external.py) through everything the command manages:
pretraining, exact resume, eval, export in the library's own format, initial weights from a local file; and the
one-line errors (unknown names, arguments, image sizes, transfer), and the export of a selfsup-only ResNet."""

from __future__ import annotations

import json

import pytest
import torch

from selfsup.checkpoints import list_checkpoints, load_checkpoint
from selfsup.cli import main

timm = pytest.importorskip("timm")

TINY = ["--data", "digits", "--batch-size", "16", "--image-size", "16", "--projection-hidden-dim", "64",
        "--projection-dim", "32", "--no-progress", "--num-workers", "0", "--no-report", "--no-eval-at-end",
        "--log-every", "1", "--checkpoint-every-steps", "1", "--keep-checkpoints", "5"]

# A genuine non-ResNet of each library, small enough for a CPU test: torchvision's MobileNetV3 (BatchNorm,
# squeeze-excitation, a two-layer classifier) with SimCLR, and a 2-block timm ViT on 4 px patches of the 16 px
# digits, with stochastic depth (random in training: resume must replay it), with BYOL (a target network).
CASES = {
    "torchvision": ("torchvision:mobilenet_v3_small", {}, ["--method", "simclr"], ["classifier.3.bias",
                                                                                    "classifier.3.weight"]),
    "timm": ("timm:vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "depth": 2, "drop_path_rate": 0.1},
             ["--method", "byol", "--prediction-hidden-dim", "64"], ["head.bias", "head.weight"]),
}


def _one_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


def _library_model(name: str, args: dict):
    library, model_name = name.split(":")
    if library == "torchvision":
        import torchvision

        return torchvision.models.get_model(model_name, **args)
    return timm.create_model(model_name, **args)


@pytest.mark.parametrize("library", sorted(CASES))
def test_pretrain_resume_eval_export_through_the_command(library, tmp_path, capsys):
    from selfsup.eval.pretrained import load_backbone

    name, args, method, classifier = CASES[library]
    flags = ["--backbone", name, *method, *TINY]
    if args:
        flags += ["--backbone-args", ",".join(f"{key}={value}" for key, value in args.items())]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["pretrain", *flags, "--max-steps", "3", "--out", str(full)]) == 0
    assert main(["pretrain", *flags, "--max-steps", "2", "--out", str(split)]) == 0
    assert main(["pretrain", *flags, "--max-steps", "3", "--out", str(split), "--resume", "auto"]) == 0
    capsys.readouterr()

    uninterrupted, resumed = (load_checkpoint(list_checkpoints(out / "checkpoints")[-1]) for out in (full, split))
    assert uninterrupted["step"] == resumed["step"] == 3
    assert uninterrupted["backbone_config"] == {"name": name, "backbone_args": args}
    for key, value in uninterrupted["model"].items():
        assert torch.equal(value, resumed["model"][key]), f"resume is not exact at {key}"
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in rows) and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows
                                                      if "loss" in r)

    assert main(["eval", "--checkpoint", str(full / "backbone.pt"), "--train-data", "digits", "--no-baselines",
                 "--linear-max-iter", "5", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"knn_top1", "linear_top1"}

    exported = tmp_path / "exported.pt"
    assert main(["export", "--checkpoint", str(full / "backbone.pt"), "--output", str(exported)]) == 0
    line = capsys.readouterr().out.strip()
    assert f"a {library} state_dict" in line and "load with: " in line
    exec(line.split("load with: ", 1)[1], {})  # the printed loader runs as printed

    model = _library_model(name, args)
    result = model.load_state_dict(torch.load(exported, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == classifier and not result.unexpected_keys
    if library == "torchvision":
        model.classifier[3] = torch.nn.Identity()
    else:
        model.reset_classifier(0)
    trained = load_backbone(full / "backbone.pt").eval()
    assert trained.training_forwards >= 3, "the count of training forwards (the dropout's seed) is saved"
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), trained(images))
    assert all(torch.equal(a, b) for a, b in zip(load_backbone(list_checkpoints(full / "checkpoints")[-1])
                                                 .state_dict().values(), trained.state_dict().values()))


def test_initial_weights_from_a_local_file_load_and_a_misfit_is_one_line(tmp_path):
    from selfsup.config import PretrainConfig
    from selfsup.models import ResNetBackbone
    from selfsup.models.external import ExternalBackbone
    from selfsup.train.build import build_backbone

    source = ExternalBackbone("torchvision:mobilenet_v3_small")
    full_model = {**source.library_state_dict(), "classifier.3.weight": torch.zeros(1000, 1024),
                  "classifier.3.bias": torch.zeros(1000)}  # as torchvision's own files: the classifier is ignored
    torch.save(full_model, tmp_path / "weights.pt")
    config = PretrainConfig(backbone="torchvision:mobilenet_v3_small", backbone_weights=str(tmp_path / "weights.pt"))
    built = build_backbone(config, 16)
    assert all(torch.equal(value, source.library_state_dict()[key]) for key, value in built.model.state_dict().items())

    torch.save(ResNetBackbone("resnet18", cifar_stem=True, width=0.125).torchvision_state_dict(), tmp_path / "r.pt")
    config = PretrainConfig(backbone="resnet18", width=0.25, backbone_weights=str(tmp_path / "r.pt"))
    with pytest.raises(ValueError, match=r"setting 'backbone_weights': .*r\.pt does not fit resnet18 \(width 0\.25, "
                                         r"CIFAR stem\): \d+ of other shapes \(e\.g\. ") as error:
        build_backbone(config, 16)
    assert "\n" not in str(error.value)
    config = PretrainConfig(backbone="resnet18", width=0.125, backbone_weights=str(tmp_path / "r.pt"))
    assert torch.equal(build_backbone(config, 16).resnet.conv1.weight, torch.load(tmp_path / "r.pt")["conv1.weight"])


@pytest.mark.parametrize(("flags", "named"), [
    (["--backbone", "torchvision:not_a_model"], "torchvision.models.list_models("),
    (["--backbone", "timm:not_a_model"], "timm.list_models("),
    (["--backbone", "resnet99"], "unknown backbone 'resnet99'"),
    (["--backbone", "keras:resnet50"], "is not torchvision:NAME or timm:NAME"),
    (["--backbone-args", "image_size=16"], "setting 'backbone_args' is for torchvision:NAME and timm:NAME"),
    (["--backbone", "torchvision:vit_b_16", "--backbone-args", "weights=DEFAULT"], "would download weights"),
    (["--backbone", "torchvision:shufflenet_v2_x0_5", "--backbone-args", "not_an_argument=1"],
     "torchvision:shufflenet_v2_x0_5 does not take {'not_an_argument': 1}"),
    (["--backbone", "timm:vit_tiny_patch16_224", "--backbone-args", "depth=1"],
     "takes 224 px images only, the run feeds 16 px images (image_size) and 16 px crops (crop_size); give "
     "--backbone-args img_size=16"),
    (["--backbone", "torchvision:mobilenet_v3_small", "--backbone-weights", "/nonexistent/w.pt"],
     "file not found: /nonexistent/w.pt"),
])
def test_bad_backbones_are_one_line_and_exit_2(tmp_path, capsys, flags, named):
    assert main(["pretrain", *TINY, "--max-steps", "1", "--out", str(tmp_path / "run"), *flags]) == 2
    assert named in _one_line(capsys)


def test_backbone_args_on_the_command_line_and_in_a_recipe(tmp_path, capsys):
    from selfsup.cli import _settings, build_parser
    from selfsup.flags import parse_mapping

    assert parse_mapping("img_size=32, patch_size=4,drop_path_rate=0.1,class_token=false,global_pool=avg,x=none") \
        == {"img_size": 32, "patch_size": 4, "drop_path_rate": 0.1, "class_token": False, "global_pool": "avg",
            "x": None}
    assert parse_mapping("") == {}
    parser = build_parser()
    given = _settings(parser.parse_args(["pretrain", "--backbone", "timm:vit_tiny_patch16_224",
                                         "--backbone-args", "img_size=32,patch_size=4"]))
    (tmp_path / "recipe.yaml").write_text("backbone: timm:vit_tiny_patch16_224\n"
                                          "backbone_args: {img_size: 32, patch_size: 4}\n")
    recipe = _settings(parser.parse_args(["pretrain", "--config", str(tmp_path / "recipe.yaml")]))
    assert given.backbone_args == recipe.backbone_args == {"img_size": 32, "patch_size": 4}
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["pretrain", "--backbone-args", "img_size"])
    assert exit_.value.code == 2
    assert "expected NAME=VALUE" in _one_line(capsys)
    help_text = parser._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert "--backbone-args NAME=VALUE,..." in help_text and "--backbone-weights" in help_text


def test_a_selfsup_only_resnet_export_says_it_is_not_torchvision_and_how_to_load_it(tmp_path, capsys):
    from selfsup.checkpoints import save_checkpoint
    from selfsup.models import ResNetBackbone, backbone_config

    for width, cifar_stem, says in ((0.125, True, "NOT a torchvision ResNet: a selfsup resnet18 with width 0.125 "
                                     "and a CIFAR stem"), (1.0, True, "NOT a torchvision ResNet"),
                                    (1.0, False, "a torchvision state_dict of resnet18")):
        backbone = ResNetBackbone("resnet18", cifar_stem=cifar_stem, width=width)
        save_checkpoint({"backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone),
                         "image_size": 32}, tmp_path / "b.pt")
        assert main(["export", "--checkpoint", str(tmp_path / "b.pt"), "--output", str(tmp_path / "e.pt")]) == 0
        line = capsys.readouterr().out.strip()
        assert len(line.splitlines()) == 1 and says in line, line
        exec(line.split("load with: ", 1)[1], {})  # the printed loader loads the file


def test_transfer_needs_a_resnet_and_takes_torchvision_resnets():
    from selfsup.eval.detection import build_detector
    from selfsup.eval.segmentation import build_segmenter
    from selfsup.models.external import ExternalBackbone

    mobilenet = ExternalBackbone("torchvision:mobilenet_v3_small")
    with pytest.raises(ValueError, match="transfer detect: backbone torchvision:mobilenet_v3_small is not a ResNet"):
        build_detector(mobilenet, 2, 64)
    with pytest.raises(ValueError, match="transfer segment: backbone torchvision:mobilenet_v3_small is not a ResNet"):
        build_segmenter(mobilenet, 2)
    build_segmenter(ExternalBackbone("torchvision:resnet18"), 2)  # a torchvision ResNet has the four stages


def test_random_init_row_rebuilds_an_external_model_with_its_librarys_initialisation():
    """reset_parameters misses a ViT's position embedding and class token: the baseline builds the model anew."""
    from selfsup.eval.table import reinitialized
    from selfsup.models.external import ExternalBackbone

    args = {"img_size": 16, "patch_size": 4, "depth": 1}
    trained = ExternalBackbone("timm:vit_tiny_patch16_224", args)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)  # as if trained: every tensor moved
    fresh = reinitialized(trained, seed=5)
    torch.manual_seed(5)
    expected = ExternalBackbone("timm:vit_tiny_patch16_224", args)
    assert fresh.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), expected.state_dict().values()))
    assert not torch.equal(fresh.model.pos_embed, trained.model.pos_embed)


def test_a_network_too_deep_for_the_image_size_is_one_line_naming_the_setting(tmp_path, capsys):
    code = main(["pretrain", "--backbone", "torchvision:convnext_tiny", "--data", "digits", "--max-steps", "1",
                 "--batch-size", "8", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "setting 'image_size': torchvision:convnext_tiny cannot take 16x16 px images" in err[0]


def test_the_report_title_names_the_backbone():
    from conftest import pretrain_config

    from selfsup.pipeline import backbone_name

    assert backbone_name(pretrain_config(width=0.125)) == "resnet18 at width 0.125"
    vit = pretrain_config(backbone="timm:vit_tiny_patch16_224", backbone_args={"img_size": 16, "patch_size": 4})
    assert backbone_name(vit) == "timm:vit_tiny_patch16_224 (img_size=16, patch_size=4)"
