"""End to end: the selfsup command on a small real subset, and exact resume."""

import json

import pytest
import torch
from conftest import pretrain_config

from selfsup.checkpoints import list_checkpoints, load_checkpoint
from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.models import build_torchvision_resnet
from selfsup.pipeline import pretrain

TINY = ["--width", "0.125", "--projection-hidden-dim", "64", "--projection-dim", "32",
        "--no-progress", "--num-workers", "0", "--linear-max-iter", "5"]
TINY_PREDICTOR = {"byol": ["--prediction-hidden-dim", "64"], "simclr": []}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_cli_pretrain_eval_export_on_cifar_subset(method, cifar_subset, tmp_path, capsys):
    train_dir, test_dir = cifar_subset
    out = tmp_path / "run"
    code = main(["pretrain", "--method", method, "--data", str(train_dir), "--test-data", str(test_dir),
                 "--epochs", "2", "--batch-size", "24", "--out", str(out), *TINY, *TINY_PREDICTOR[method]])
    assert code == 0
    printed = capsys.readouterr().out
    assert "kNN" in printed and "random init" in printed and "raw pixels" in printed
    table = json.loads((out / "eval.json").read_text())
    assert 0 <= table["knn_top1"] <= 100 and 0 <= table["linear_top1"] <= 100
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 * (72 // 24)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    checkpoints = list_checkpoints(out / "checkpoints")
    assert checkpoints and load_checkpoint(checkpoints[-1])["step"] == 6

    code = main(["eval", "--checkpoint", str(out / "backbone.pt"), "--train-data", str(train_dir),
                 "--test-data", str(test_dir), "--linear-max-iter", "5", "--no-baselines", "--out", str(tmp_path)])
    assert code == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == {"knn_top1", "linear_top1"}
    written = json.loads((tmp_path / f"eval_{test_dir.parent.name}-{test_dir.name}.json").read_text())
    assert written["rows"][0]["name"] == "pretrained"
    assert json.loads((out / "eval.json").read_text()) == table, "pretraining's eval.json is left as it was"

    exported = tmp_path / "resnet18.pt"
    assert main(["export", "--checkpoint", str(out / "backbone.pt"), "--output", str(exported)]) == 0
    state = torch.load(exported, weights_only=True)
    assert not any(key.startswith("fc.") for key in state)


def test_export_loads_into_plain_torchvision_resnet(tmp_path):
    from selfsup.checkpoints import save_checkpoint
    from selfsup.eval.pretrained import load_backbone
    from selfsup.eval.run import export_torchvision
    from selfsup.models import ResNetBackbone

    backbone = ResNetBackbone("resnet18", cifar_stem=True)
    save_checkpoint({"backbone": backbone.state_dict(), "backbone_config": {
        "name": "resnet18", "cifar_stem": True, "width": 1.0}, "image_size": 32}, tmp_path / "b.pt")
    export_torchvision(tmp_path / "b.pt", tmp_path / "tv.pt")
    model = build_torchvision_resnet("resnet18", cifar_stem=True)
    result = model.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    model.fc = torch.nn.Identity()
    loaded = load_backbone(tmp_path / "b.pt")
    images = torch.randn(2, 3, 32, 32)
    model.eval(), loaded.eval()
    torch.testing.assert_close(model(images), loaded(images))


@pytest.fixture
def digits_subset(tmp_path):
    """256 real digits as an array file: 8 steps an epoch at batch 32."""
    import numpy as np

    from selfsup.data.datasets import load_digits_data

    data = load_digits_data("train")
    path = tmp_path / "digits256.npz"
    np.savez(path, images=data.images[:256].numpy(), labels=data.labels[:256].numpy())
    return str(path)


def _config(tmp_path, name, data, **overrides):
    values = dict(method="byol", data=data, out=str(tmp_path / name), image_size=16, width=0.125,
                  projection_hidden_dim=64, projection_dim=32, prediction_hidden_dim=64, batch_size=32,
                  epochs=2, warmup_epochs=0.5, eval_at_end=False, progress=False, log_every=2, num_workers=0,
                  checkpoint_every_steps=3, keep_checkpoints=10, optimizer="lars")  # LARS: its state is checked
    values.update(overrides)
    return pretrain_config(**values)


@pytest.mark.parametrize(("method", "extra"), [("byol", {}), ("simclr", {}),
                                               ("byol", {"predictor_lr_multiplier": 10.0, "lars_clip": True,
                                                         "lars_trust_coefficient": 0.02})],
                         ids=["byol", "simclr", "byol-fast-predictor-clipped-lars"])
def test_resume_from_mid_epoch_is_bitwise_exact(tmp_path, method, extra, digits_subset):
    # 256 images -> 8 steps/epoch at batch 32, 16 steps in all; checkpoints every 3 steps.
    uninterrupted = pretrain(_config(tmp_path, "full", digits_subset, method=method, **extra), log=lambda *_: None)
    interrupted = _config(tmp_path, "split", digits_subset, method=method, max_steps=13, **extra)
    pretrain(interrupted, log=lambda *_: None)
    mid_epoch = [p for p in list_checkpoints(tmp_path / "split" / "checkpoints")
                 if load_checkpoint(p)["step"] == 12][0]  # step 12: epoch 2, batch 4
    resumed = pretrain(_config(tmp_path, "split", digits_subset, method=method, **extra), resume=mid_epoch,
                       log=lambda *_: None)
    assert uninterrupted.steps == resumed.steps == 16
    full = load_checkpoint(uninterrupted.checkpoint)
    again = load_checkpoint(resumed.checkpoint)
    for key, value in full["model"].items():
        assert torch.equal(value, again["model"][key]), key
    for group_a, group_b in zip(full["optimizer"]["state"].values(), again["optimizer"]["state"].values()):
        assert torch.equal(group_a["momentum_buffer"], group_b["momentum_buffer"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "the metrics file reads as one run after a resume"
    for group in again["optimizer"]["param_groups"]:  # the settings reached the optimizer
        assert group["clip"] == extra.get("lars_clip", False)
        assert group["trust_coefficient"] == extra.get("lars_trust_coefficient", 0.001)


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_channels_last_follows_the_device_and_computes_what_nchw_computes(tmp_path, digits_subset, method):
    import copy

    from selfsup.train.build import build_backbone, build_method

    assert PretrainConfig().channels_last is None  # on for CUDA, off on CPU
    run = pretrain(_config(tmp_path, "cpu", digits_subset, method=method, max_steps=1), log=lambda *_: None)
    assert run.backbone.resnet.layer1[0].conv1.weight.is_contiguous()
    run = pretrain(_config(tmp_path, "nhwc", digits_subset, method=method, max_steps=1, channels_last=True),
                   log=lambda *_: None)
    conv = run.backbone.resnet.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()

    config = _config(tmp_path, "x", digits_subset, method=method)
    torch.manual_seed(0)
    # float64, so that summing in another order cannot hide a real difference behind float32 rounding.
    nchw = build_method(config, build_backbone(config, 16)).double()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    views = torch.randn(2, 8, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss_nchw = nchw(views[0], views[1]).loss
    loss_nhwc = nhwc(views[0].contiguous(memory_format=torch.channels_last),
                     views[1].contiguous(memory_format=torch.channels_last)).loss
    loss_nchw.backward()
    loss_nhwc.backward()
    assert torch.allclose(loss_nchw, loss_nhwc, rtol=1e-12)
    scale = max(p.grad.abs().max().item() for p in nchw.parameters() if p.grad is not None)
    for (name, a), b in zip(nchw.named_parameters(), nhwc.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12 * scale), name


def test_resume_refuses_a_different_model(tmp_path, digits_subset):
    first = pretrain(_config(tmp_path, "a", digits_subset, max_steps=3), log=lambda *_: None)
    with pytest.raises(ValueError, match="method"):
        pretrain(_config(tmp_path, "a", digits_subset, method="simclr"), resume=first.checkpoint,
                 log=lambda *_: None)
    with pytest.raises(ValueError, match="predictor_lr_multiplier=1.0.*predictor_lr_multiplier=10.0"):
        pretrain(_config(tmp_path, "a", digits_subset, predictor_lr_multiplier=10.0), resume=first.checkpoint,
                 log=lambda *_: None)
    with pytest.raises(ValueError, match="lars_clip=False.*lars_clip=True"):
        pretrain(_config(tmp_path, "a", digits_subset, lars_clip=True), resume=first.checkpoint, log=lambda *_: None)


def test_resume_refuses_a_checkpoint_whose_optimizer_auto_chose_another(tmp_path, digits_subset, monkeypatch):
    from selfsup.methods import method_class

    first = pretrain(_config(tmp_path, "a", digits_subset, optimizer="auto", max_steps=3), log=lambda *_: None)
    saved = load_checkpoint(first.checkpoint)
    assert saved["hyperparameters"] == {"optimizer": "sgd", "base_lr": 0.12, "weight_decay": 5e-4}  # BYOL's
    # A later version whose auto rule picks another optimizer for the same settings: the saved SGD state would be
    # read as AdamW's, so the run is refused with the way to continue it.
    monkeypatch.setattr(method_class("byol"), "short_run_optimizer", ("adamw", 1e-3, 0.05))
    with pytest.raises(ValueError, match="trained with the sgd optimizer.*is adamw.*--optimizer sgd --base-lr 0.12 "
                                         "--weight-decay 0.0005 to continue"):
        pretrain(_config(tmp_path, "a", digits_subset, optimizer="auto"), resume=first.checkpoint,
                 log=lambda *_: None)
    # Those flags continue it; other rates would be another run, and are refused as before.
    with pytest.raises(ValueError, match="optimizer='auto', this run has optimizer='sgd' \\(and base_lr"):
        pretrain(_config(tmp_path, "a", digits_subset, optimizer="sgd", base_lr=0.06, weight_decay=5e-4),
                 resume=first.checkpoint, log=lambda *_: None)
    same = dict(optimizer="sgd", base_lr=0.12, weight_decay=5e-4)
    assert pretrain(_config(tmp_path, "b", digits_subset, **same), resume=first.checkpoint,
                    log=lambda *_: None).steps == 16
    # A checkpoint from before the record: told by its optimizer state's own options.
    del saved["hyperparameters"]
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="trained with the sgd optimizer"):
        pretrain(_config(tmp_path, "a", digits_subset, optimizer="auto"), resume=tmp_path / "old.pt",
                 log=lambda *_: None)
    resumed = pretrain(_config(tmp_path, "c", digits_subset, **same), resume=tmp_path / "old.pt",
                       log=lambda *_: None)
    assert resumed.steps == 16


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\nbatchsize: 4\n")
    assert main(["pretrain", "--config", str(recipe)]) == 2
    assert "'batchsize'" in capsys.readouterr().err
    assert main(["pretrain", "--batch-size", "5000", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_pretrain_without_a_config_starts_from_the_default_recipe(monkeypatch, tmp_path, capsys):
    import selfsup.pipeline

    seen = []

    def fake_pretrain(config, resume=None, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(selfsup.pipeline, "pretrain", fake_pretrain)
    for argv in (["pretrain"], ["pretrain", "--no-progress", "--out", str(tmp_path)], ["pretrain", "--method", "byol"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "embedded default recipe" in capsys.readouterr().out, argv
    default, with_out, byol = seen
    assert default.method == with_out.method == "simclr" and with_out.out == str(tmp_path) and not with_out.progress
    # The recipe's settings, with BYOL's own options (the recipe's are SimCLR's).
    assert byol.method == "byol" and byol.data == "digits" and byol.width == 0.25
    assert byol.method_args == type(byol.method_args)()


def test_crop_size_sets_the_views_and_leaves_the_evaluation_size(tmp_path, digits_subset, monkeypatch):
    from selfsup.methods.byol import BYOL

    seen, forward = [], BYOL.forward

    def recording(self, view1, view2):
        seen.append((tuple(view1.shape), tuple(view2.shape)))
        return forward(self, view1, view2)

    monkeypatch.setattr(BYOL, "forward", recording)
    lines = []
    run = pretrain(_config(tmp_path, "crops", digits_subset, crop_size=12, max_steps=2), log=lines.append)
    assert seen == [((32, 3, 12, 12), (32, 3, 12, 12))] * 2
    assert any("images at 16 px (views of 12 px)" in line for line in lines)
    assert load_checkpoint(run.checkpoint)["image_size"] == 16  # what eval and export resize to
