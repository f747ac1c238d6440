"""``selfsup eval`` and ``selfsup export``: load a pretrained backbone, measure it, hand it on."""

from __future__ import annotations

import re
from pathlib import Path

from selfsup.config import EvalConfig
from selfsup.data.datasets import load_image_data, load_test_split, match_classes
from selfsup.devices import resolve_device
from selfsup.eval.pretrained import load_backbone, load_backbone_and_metadata
from selfsup.files import atomic_torch_save, write_json


def run_evaluation(config: EvalConfig, log=print) -> dict:
    """kNN and linear probe (and baselines) of a checkpoint's backbone; writes eval.json to ``out``."""
    from selfsup.eval.features import extract_features
    from selfsup.eval.table import evaluation_table, format_table, reinitialized

    if config.checkpoint is None:
        raise ValueError("setting 'checkpoint' is required: the pretraining checkpoint or backbone.pt to evaluate")
    backbone, meta = load_backbone_and_metadata(config.checkpoint)
    device = resolve_device(config.device)
    backbone.to(device)
    train = load_image_data(config.train_data, "train", config.skip_bad_images)
    test = load_test_split(config.train_data, config.test_data, config.skip_bad_images, progress=True)
    if test is None:
        raise ValueError("setting 'test_data' is required for a data folder (the labelled test split)")
    test = match_classes(train, test)
    for note in train.notes + test.notes:
        log(note)
    image_size = config.image_size or meta["image_size"] or 224
    # Extracted once here: both the table and the low-label probes read them.
    def features_of(model):
        return tuple(extract_features(model, d, image_size, meta["mean"], meta["std"], device=device,
                                      num_workers=config.num_workers, progress=True) for d in (train, test))

    features = features_of(backbone)
    random_features = features_of(reinitialized(backbone, config.seed).to(device)) if config.baselines else None
    table = evaluation_table(backbone, train, test, image_size, meta["mean"], meta["std"], config.knn_k,
                             config.knn_temperature, config.linear_max_iter, config.baselines, device,
                             config.seed, config.num_workers, progress=True, log=lambda *_: None,
                             pretrained_features=features, random_features=random_features)
    table["checkpoint"] = str(config.checkpoint)
    log(format_table(table))
    if config.low_label_fractions:
        from selfsup.eval.finetune import low_label_table

        table["low_label"] = low_label_table(backbone, train, test, image_size, meta["mean"], meta["std"],
                                             config.low_label_fractions, config.finetune_epochs,
                                             config.linear_max_iter, config.batch_size, device, config.seed,
                                             features, baselines=config.baselines,
                                             random_features=random_features)
        log(format_low_label_table(table["low_label"]))
    out = Path(config.out) if config.out else Path(config.checkpoint).resolve().parent
    # Named after the data, so that it never replaces the eval.json that pretraining wrote, nor the result on
    # other data.
    path = out / f"eval_{_data_label(config.test_data or config.train_data)}.json"
    write_json(path, table)
    log(f"wrote {path}")
    return table


def _data_label(spec: str) -> str:
    """A file-name label for a data setting: a built-in's name, or a folder's last two parts (cifar10-test)."""
    parts = [part for part in Path(spec).parts if part not in ("/", ".", "..")][-2:]
    label = "-".join(parts) or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).removesuffix(".npz").removesuffix(".npy")


def format_low_label_table(rows: list[dict]) -> str:
    baselines = bool(rows) and "random_linear_top1" in rows[0]
    header = f"{'labels':>8}{'images':>8}{'linear top-1':>14}{'fine-tune top-1':>17}"
    if baselines:
        header += f"{'random init: linear':>21}{'fine-tune':>11}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = (f"{row['fraction']:>8.0%}{row['labelled_images']:>8}{row['linear_top1']:>14.2f}"
                f"{row['finetune_top1']:>17.2f}")
        if baselines:
            line += f"{row['random_linear_top1']:>21.2f}{row['random_finetune_top1']:>11.2f}"
        lines.append(line)
    return "\n".join(lines)


def export_backbone(checkpoint: str | Path, output: str | Path) -> tuple[Path, str]:
    """Write the backbone's weights in its own library's format, without the classifier: torchvision's names for
    a ResNet (``torchvision.models.resnetXX``) or a ``torchvision:`` model, timm's for a ``timm:`` one. Returns the
    path and a line saying what it is and the one line of Python that loads it (a ResNet of width != 1 or with the
    CIFAR stem is not a torchvision ResNet, and the line says so)."""
    from selfsup.models.external import export_description, export_state_dict

    backbone = load_backbone(checkpoint)
    path = atomic_torch_save(export_state_dict(backbone), output)
    return path, export_description(backbone, path)


def export_torchvision(checkpoint: str | Path, output: str | Path) -> Path:
    """See :func:`export_backbone`; the path alone."""
    return export_backbone(checkpoint, output)[0]
