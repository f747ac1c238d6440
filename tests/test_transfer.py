"""Transfer to detection and segmentation: readers, metrics, backbone loading, one-step smoke runs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.annotations import (
    CocoDetection,
    MaskPairs,
    PennFudan,
    boxes_from_instance_mask,
    read_image_tensor,
    read_pascal_boxes,
)
from selfsup.eval.detection import DetectionSettings, coco_box_map, finetune_detection
from selfsup.eval.pretrained import load_backbone
from selfsup.eval.segmentation import (
    SegmentationSettings,
    confusion_matrix,
    dilate_resnet_,
    finetune_segmentation,
    segmentation_scores,
)
from selfsup.eval.transfer_cli import add_transfer_parser
from selfsup.models.backbones import ResNetBackbone


def _pennfudan_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    base = Path(os.environ.get("SELFSUP_DATASETS", default))
    path = base / "pennfudan"
    if not (path / "PNGImages").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Penn-Fudan data missing at {path} (required under CI)")
        pytest.skip(f"Penn-Fudan data not found at {path}; set SELFSUP_DATASETS")
    return path


def _write_image(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def _two_people_mask(height: int = 20, width: int = 30) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:9, 3:7] = 1  # rows 2..8, columns 3..6 -> box (3, 2, 7, 9)
    mask[10:20, 20:30] = 2  # touches the bottom-right corner -> box (20, 10, 30, 20)
    return mask


def _synthetic_pennfudan(root: Path, count: int = 3) -> Path:
    for index in range(count):
        _write_image(root / "PNGImages" / f"Ped{index:02d}.png", 20, 30, seed=index)
        mask = _two_people_mask() if index % 2 == 0 else np.zeros((20, 30), dtype=np.uint8)
        _write_mask(root / "PedMasks" / f"Ped{index:02d}_mask.png", mask)
    return root


# ----------------------------------------------------------------------------------------------- readers

def test_pennfudan_real_files_boxes_match_annotations_and_split():
    root = _pennfudan_dir()
    train, test = PennFudan(root, "train"), PennFudan(root, "test")
    assert (len(train), len(test)) == (120, 50)
    assert not set(train.stems) & set(test.stems) and train.stems == sorted(train.stems)
    assert max(train.stems) < min(test.stems)
    image, target = train[0]  # FudanPed00001: two walking people
    assert image.dtype == torch.uint8 and image.shape == (3, 536, 559)
    assert target["boxes"].shape == (2, 4) and target["labels"].tolist() == [1, 1]
    assert target["masks"].shape == (2, 536, 559)
    annotated = read_pascal_boxes(root / "Annotation" / "FudanPed00001.txt")
    # The txt boxes (160, 182) - (302, 431) and (420, 171) - (535, 486), 1-based inclusive.
    assert annotated.tolist() == [[159, 181, 302, 431], [419, 170, 535, 486]]
    assert (target["boxes"] - annotated).abs().max() <= 6  # mask boxes are tight, the drawn ones close
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        x0, y0, x1, y1 = box.long().tolist()
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the whole instance lies inside its box
    _, person = PennFudan(root, "test", task="segmentation")[0]
    assert person.dtype == torch.int64 and set(person.unique().tolist()) == {0, 1}


def test_pennfudan_synthetic_boxes_masks_and_empty_image(tmp_path):
    root = _synthetic_pennfudan(tmp_path)
    dataset = PennFudan(root, "all")
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[3, 2, 7, 9], [20, 10, 30, 20]]
    assert target["masks"].sum(dim=(1, 2)).tolist() == [7 * 4, 10 * 10]
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    _, semantic = PennFudan(root, "all", task="segmentation")[0]
    assert torch.equal(semantic, torch.from_numpy(_two_people_mask() > 0).long())
    assert PennFudan(root, "train", train_count=2).stems == ["Ped00", "Ped01"]
    assert PennFudan(root, "test", train_count=2).stems == ["Ped02"]


def test_boxes_from_instance_mask_one_pixel_and_empty():
    mask = torch.zeros(4, 5, dtype=torch.int64)
    mask[1, 2] = 3
    boxes, masks = boxes_from_instance_mask(mask)
    assert boxes.tolist() == [[2, 1, 3, 2]] and masks.shape == (1, 4, 5)
    boxes, masks = boxes_from_instance_mask(torch.zeros(4, 5, dtype=torch.int64))
    assert boxes.shape == (0, 4) and masks.shape == (0, 4, 5)


def test_reader_errors_name_the_file(tmp_path):
    root = _synthetic_pennfudan(tmp_path / "pf")
    _write_mask(root / "PedMasks" / "Ped01_mask.png", np.zeros((21, 30), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"Ped01_mask\.png.*size 30x21.*Ped01\.png.*30x20"):
        PennFudan(root, "all")[1]
    (root / "PedMasks" / "Ped02_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask not found: .*Ped02_mask\.png"):
        PennFudan(root, "all")[2]
    (root / "PNGImages" / "Ped00.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*Ped00\.png"):
        PennFudan(root, "all")[0]
    with pytest.raises(FileNotFoundError, match=r"image not found: .*missing\.png"):
        read_image_tensor(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="PNGImages"):
        PennFudan(tmp_path / "nowhere")
    annotation = tmp_path / "a.txt"
    annotation.write_text("Objects with ground truth : 2 { }\nBounding box for object 1 \"P\" "
                          "(Xmin, Ymin) - (Xmax, Ymax) : (1, 2) - (3, 4)\n")
    with pytest.raises(ValueError, match=r"a\.txt: declares 2 objects but has 1 boxes"):
        read_pascal_boxes(annotation)


def _coco_folder(root: Path) -> Path:
    _write_image(root / "images" / "a.jpg", 20, 30, seed=1)
    _write_image(root / "images" / "b.png", 24, 16, seed=2)
    content = {
        "images": [{"id": 5, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.png"}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 3, 10, 5]},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 4, 4]},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},
        ],
    }
    (root / "train.json").write_text(json.dumps(content))
    (root / "test.json").write_text(json.dumps(content))
    return root


def test_coco_reader_boxes_labels_empty_image_and_errors(tmp_path):
    root = _coco_folder(tmp_path)
    dataset = CocoDetection(root / "train.json", root / "images")
    assert dataset.category_ids == [3, 7] and dataset.num_classes == 3
    image, target = dataset[0]
    assert image.shape == (3, 20, 30)
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4]]  # crowd left out
    assert target["labels"].tolist() == [2, 1] and int(target["image_id"]) == 5
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    content = json.loads((root / "train.json").read_text())
    content["annotations"][0]["category_id"] = 4
    (root / "bad.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"bad\.json, annotations\[0\]: category_id 4"):
        CocoDetection(root / "bad.json", root / "images")
    (root / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        dataset[1]
    with pytest.raises(FileNotFoundError, match=r"COCO annotation file not found: .*none\.json"):
        CocoDetection(root / "none.json", root / "images")


def test_mask_pairs_reader_and_errors(tmp_path):
    _write_image(tmp_path / "images" / "x.jpg", 12, 10)
    _write_mask(tmp_path / "masks" / "x.png", np.arange(120).reshape(12, 10) % 3)
    image, mask = MaskPairs(tmp_path / "images", tmp_path / "masks")[0]
    assert image.shape == (3, 12, 10) and torch.equal(mask, torch.arange(120).reshape(12, 10) % 3)
    _write_mask(tmp_path / "masks" / "x.png", np.zeros((10, 12)))
    with pytest.raises(ValueError, match=r"x\.png has size 12x10 .* image .*x\.jpg is 10x12"):
        MaskPairs(tmp_path / "images", tmp_path / "masks")[0]
    _write_image(tmp_path / "images" / "y.png", 12, 10)
    with pytest.raises(FileNotFoundError, match=r"mask not found: .*y\.png \(for image .*y\.png\)"):
        MaskPairs(tmp_path / "images", tmp_path / "masks")


# ----------------------------------------------------------------------------------------------- metrics

def test_confusion_matrix_and_scores_hand_computed():
    targets = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    confusion = confusion_matrix(predictions, targets, num_classes=3)
    # row = truth: class 0 -> (0, 1); class 1 -> 1, 1, 2; class 2 -> 2, 0; the 255 pixel left out
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    scores = segmentation_scores(confusion)
    iou = [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]
    assert scores["iou_per_class"] == pytest.approx(iou)
    assert scores["miou"] == pytest.approx(sum(iou) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 7)
    # A class neither present nor predicted is left out of the mean, not counted as 0.
    absent = segmentation_scores(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3))
    assert absent["miou"] == 1.0 and np.isnan(absent["iou_per_class"][2])
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 2\] or 255, found \[7\]"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)


def test_coco_box_map_hand_computed():
    truth = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1])}]
    perfect = [{"boxes": truth[0]["boxes"], "labels": torch.tensor([1, 1]),
                "scores": torch.tensor([0.9, 0.8])}]
    result = coco_box_map(truth, perfect, num_classes=2)
    assert result == {"map": pytest.approx(1.0), "map_50": pytest.approx(1.0)}
    # Ranked: hit (P 1, R 1/2), false positive (P 1/2), hit (P 2/3, R 1). Interpolated precision is 1
    # for recall <= 0.5 (51 of COCO's 101 recall points) and 2/3 above (50 points), at every IoU threshold.
    ranked = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
               "labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.8, 0.7])}]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    result = coco_box_map(truth, ranked, num_classes=2)
    assert result["map"] == pytest.approx(expected) and result["map_50"] == pytest.approx(expected)
    # A box of IoU 0.58 (10 x 5.8 inside 10 x 10) counts at 0.5 and 0.55 only: 2 of 10 thresholds.
    shifted = [{"boxes": torch.tensor([[0.0, 0, 10, 5.8]]), "labels": torch.tensor([1]),
                "scores": torch.tensor([1.0])}]
    single = [{"boxes": truth[0]["boxes"][:1], "labels": torch.tensor([1])}]
    result = coco_box_map(single, shifted, num_classes=2)
    assert result["map_50"] == pytest.approx(1.0) and result["map"] == pytest.approx(0.2)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "scores": torch.zeros(0)}]
    assert coco_box_map(truth, empty, num_classes=2) == {"map": 0.0, "map_50": 0.0}


# ------------------------------------------------------------------------------------------- backbones

def test_load_backbone_checkpoint_and_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", cifar_stem=True, width=0.125)
    checkpoint = {"backbone": backbone.state_dict(), "step": 3,
                  "backbone_config": {"name": "resnet18", "cifar_stem": True, "width": 0.125}}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    exported = {**backbone.torchvision_state_dict(), "fc.weight": torch.zeros(10, 64),
                "fc.bias": torch.zeros(10)}
    torch.save(exported, tmp_path / "export.pt")
    images = torch.randn(2, 3, 16, 16)
    backbone.eval()
    for name in ("ckpt.pt", "export.pt"):
        loaded = load_backbone(tmp_path / name).eval()
        assert (loaded.name, loaded.cifar_stem, loaded.width) == ("resnet18", True, 0.125)
        torch.testing.assert_close(loaded(images), backbone(images))
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not a ResNet state dict"):
        load_backbone(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_backbone(tmp_path / "nothing.pt")


def test_dilation_matches_torchvision_replace_stride_with_dilation():
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    # Two blocks a stage: the first block of a dilated stage keeps the previous dilation, the second not.
    reference = ResNet(Bottleneck, [1, 2, 2, 2], width_per_group=16,
                       replace_stride_with_dilation=[False, True, True]).eval()
    ours = ResNet(Bottleneck, [1, 2, 2, 2], width_per_group=16).eval()
    ours.load_state_dict(reference.state_dict())
    dilate_resnet_(ours, output_stride=8)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(images)
        features = torch.nn.Sequential(*list(ours.children())[:-2])(images)
    assert features.shape == (1, 2048, 8, 8)
    torch.testing.assert_close(features, expected)
    backbone = ResNetBackbone("resnet18", width=0.125)
    dilate_resnet_(backbone.resnet, output_stride=16)
    assert torch.nn.Sequential(*list(backbone.resnet.children())[:-2])(images).shape == (1, 64, 4, 4)


# ------------------------------------------------------------------------------------------ smoke runs

def test_detection_one_step_smoke(tmp_path):
    root = _coco_folder(tmp_path)
    dataset = CocoDetection(root / "train.json", root / "images")
    backbone = ResNetBackbone("resnet18", width=0.125)
    before = backbone.resnet.conv1.weight.detach().clone()
    settings = DetectionSettings(epochs=1, batch_size=2, image_size=64, fpn_channels=16,
                                 representation_size=32, rois_per_image=32, proposals_per_image=100,
                                 warmup_steps=1)
    model, metrics = finetune_detection(backbone, dataset, dataset, dataset.num_classes, settings,
                                        log=lambda _: None)
    assert np.isfinite(metrics["final_loss"]) and 0.0 <= metrics["map_50"] <= 1.0
    assert not torch.equal(model.backbone.body.conv1.weight, before)  # the backbone is fine-tuned too


def test_segmentation_one_step_smoke(tmp_path):
    root = _synthetic_pennfudan(tmp_path)
    dataset = PennFudan(root, "all", task="segmentation")
    backbone = ResNetBackbone("resnet18", width=0.125)
    before = backbone.resnet.conv1.weight.detach().clone()
    settings = SegmentationSettings(epochs=1, batch_size=2, image_size=32, aux_loss=True)
    model, metrics = finetune_segmentation(backbone, dataset, dataset, 2, settings, log=lambda _: None)
    assert np.isfinite(metrics["final_loss"]) and 0.0 <= metrics["miou"] <= 1.0
    assert not torch.equal(model.backbone.conv1.weight, before)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup")
    add_transfer_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_segment_on_mask_pairs_writes_models_and_summary(tmp_path, capsys):
    for split, count in (("train", 2), ("test", 1)):
        for index in range(count):
            _write_image(tmp_path / "data" / split / "images" / f"{index}.png", 24, 20, seed=index)
            _write_mask(tmp_path / "data" / split / "masks" / f"{index}.png", _two_people_mask(24, 20) % 3)
    backbone = ResNetBackbone("resnet18", width=0.125)
    torch.save(backbone.torchvision_state_dict(), tmp_path / "export.pt")
    from selfsup.cli import main

    # Through the real entry point: `selfsup transfer` once failed there on a setting only `pretrain` uses.
    assert main([
        "transfer", "segment", "--checkpoint", str(tmp_path / "export.pt"), "--data", str(tmp_path / "data"),
        "--data-format", "mask-pairs", "--num-classes", "3", "--epochs", "1", "--image-size", "24",
        "--batch-size", "2", "--out", str(tmp_path / "out"),
    ]) == 0
    printed = capsys.readouterr().out
    assert "ImageNet-supervised baseline skipped" in printed and "selfsup / random" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [row["variant"] for row in summary["results"]] == ["selfsup", "random"]
    assert json.loads(printed.strip().splitlines()[-1])["task"] == "segment"
    saved = torch.load(tmp_path / "out" / "selfsup" / "model.pt", map_location="cpu", weights_only=True)
    assert saved["backbone_config"]["width"] == 0.125 and "classifier.4.weight" in saved["model"]


def test_cli_config_is_strict(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 2\nfpn_chanels: 64\n")
    args = _parser().parse_args(["transfer", "detect", "--config", str(recipe)])
    with pytest.raises(ValueError, match=r"recipe\.yaml: unknown setting\(s\) 'fpn_chanels'"):
        args.func(args)
    recipe.write_text("epochs: two\n")
    args = _parser().parse_args(["transfer", "segment", "--config", str(recipe)])
    with pytest.raises(ValueError, match="setting 'epochs'"):
        args.func(args)


@pytest.mark.parametrize("name", ["transfer_detect_pennfudan_cpu", "transfer_detect_pennfudan_gpu",
                                  "transfer_segment_pennfudan_cpu", "transfer_segment_pennfudan_gpu"])
def test_shipped_recipes_load(name):
    from selfsup.eval.transfer_cli import resolve_settings

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    task = "detect" if "detect" in name else "segment"
    args = _parser().parse_args(["transfer", task, "--config", str(path), "--epochs", "1"])
    options, settings = resolve_settings(task, args)
    assert settings.epochs == 1 and options.data_format == "pennfudan"
