"""``selfsup pretrain`` end to end: load the data, train (:mod:`selfsup.train`), then export the backbone, evaluate
it (:mod:`selfsup.eval`) and write the report. The one module that uses both training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup import dist
from selfsup.checkpoints import save_checkpoint
from selfsup.config import PretrainConfig
from selfsup.data.datasets import ImageData, load_image_data, load_test_split
from selfsup.files import write_json
from selfsup.models import ResNetBackbone, backbone_config
from selfsup.run_folder import claim_run_folder, release_run_folder
from selfsup.train.build import check_batch_size
from selfsup.train.loop import TrainedRun, start_processes, train


@dataclass
class PretrainResult:
    out_dir: Path
    backbone: ResNetBackbone
    steps: int
    checkpoint: Path | None
    table: dict | None


def pretrain(config: PretrainConfig, resume: str | Path | None = None, log=print,
             command: str | None = None) -> PretrainResult:
    """Run pretraining as ``config`` says; ``resume`` a checkpoint file, or "auto" for the newest in out/;
    ``command`` the command line recorded in OUT/config.json (default: this process's).

    Writes to ``config.out``: checkpoints, metrics.jsonl, backbone.pt, and (with a labelled test split)
    eval.json and report.md. Returns a :class:`PretrainResult`: ``out_dir``, the trained ``backbone``, the
    ``steps`` run, the newest ``checkpoint`` and the kNN / linear ``table`` (None without a labelled test split).
    """
    device = start_processes(config)
    is_main = dist.is_main_process()
    log = log if is_main else (lambda *_: None)
    data = load_image_data(config.data, "train", config.skip_bad_images, progress=config.progress and is_main)
    if data.skipped:
        log(f"skipped {len(data.skipped)} bad image(s); listed in {Path(config.out) / 'skipped_images.txt'}")
    for note in data.notes:
        log(note)
    # Loaded and matched to the training classes before any step, so that a mismatch fails at once.
    test = _labelled_test_split(config, data) if (config.eval_at_end or config.knn_every) else None
    if test is not None:
        for note in test.notes:
            log(note)
    check_batch_size(config, len(data), dist.world_size())
    if not is_main:
        return _pretrain(config, device, data, test, resume, log, command)
    lock = claim_run_folder(config.out, resuming=resume is not None, overwrite=config.overwrite)
    try:
        return _pretrain(config, device, data, test, resume, log, command)
    finally:
        release_run_folder(lock)


def _pretrain(config: PretrainConfig, device, data: ImageData, test: ImageData | None, resume, log,
              command: str | None = None) -> PretrainResult:
    """Train, then (on the main process) export, evaluate and report."""
    is_main = dist.is_main_process()

    def test_split() -> ImageData | None:
        return test

    def knn_check(epoch: int, run: TrainedRun) -> dict:
        if epoch % config.knn_every or test_split() is None:
            return {}
        return {"knn_top1": _knn_top1(config, run, data, test_split())}

    run = train(config, data, device, resume=resume, log=log, epoch_end=knn_check if config.knn_every else None,
                command=command)

    table = None
    if is_main:
        _export(run)
        test_features = None
        if config.eval_at_end and data.labels is not None:
            table, test_features = _final_evaluation(config, run, data, test_split, log)
            if table is not None:
                write_json(run.out_dir / "eval.json", table)
        if config.report:
            from selfsup.report import write_pretrain_report
            from selfsup.train.metrics_log import read_metrics

            report = write_pretrain_report(
                run.out_dir, read_metrics(run.out_dir / "metrics.jsonl"), table,
                embeddings=test_features.numpy() if test_features is not None else None,
                labels=test_split().labels.numpy() if test_features is not None else None,
                embedding_dim=run.embedding_dim, class_names=data.classes,
                title=f"{config.method} on {data.name}, {backbone_name(config)}")
            log(f"report: {report}")
    dist.barrier()
    return PretrainResult(out_dir=run.out_dir, backbone=run.backbone, steps=run.steps, checkpoint=run.checkpoint,
                          table=table)


def _export(run: TrainedRun) -> None:
    """OUT/backbone.pt (the encoder alone, with what evaluation needs) and OUT/backbone_config.json."""
    described = {"backbone_config": backbone_config(run.backbone), "image_size": run.image_size,
                 "mean": list(run.mean), "std": list(run.std)}
    write_json(run.out_dir / "backbone_config.json", {**described.pop("backbone_config"), **described})
    save_checkpoint({"backbone": run.backbone.state_dict(), "backbone_config": backbone_config(run.backbone),
                     **described}, run.out_dir / "backbone.pt")


def _labelled_test_split(config: PretrainConfig, data: ImageData) -> ImageData | None:
    from selfsup.data.datasets import match_classes

    test = load_test_split(config.data, config.test_data, config.skip_bad_images)
    if test is None or test.labels is None or data.labels is None:
        return None
    return match_classes(data, test)


def _knn_top1(config: PretrainConfig, run: TrainedRun, data: ImageData, test: ImageData) -> float:
    from selfsup.eval.features import extract_features
    from selfsup.eval.knn import knn_accuracy

    train_features, test_features = (extract_features(run.backbone, d, run.image_size, run.mean, run.std,
                                                      device=run.device, num_workers=config.num_workers)
                                     for d in (data, test))
    return round(knn_accuracy(train_features, data.labels, test_features, test.labels,
                              max(data.num_classes, 2), config.knn_k, config.knn_temperature), 2)


def _final_evaluation(config: PretrainConfig, run: TrainedRun, data: ImageData, test_split, log):
    """The kNN / linear table on the test split (``test_split()``), and the test features (for the embedding
    map)."""
    from selfsup.eval.features import extract_features
    from selfsup.eval.table import evaluation_table, format_table

    if data.num_classes < 2:
        log(f"{data.name} has {data.num_classes} class: skipping the kNN / linear table, which needs at least 2")
        return None, None
    test = test_split()
    if test is None:
        log("no labelled test data: skipping the kNN / linear table (give --test-data)")
        return None, None
    log(f"evaluating on {test.name} (kNN k={config.knn_k}, T={config.knn_temperature}; linear probe)")
    features = tuple(extract_features(run.backbone, d, run.image_size, run.mean, run.std, device=run.device,
                                      num_workers=config.num_workers) for d in (data, test))
    table = evaluation_table(run.backbone, data, test, run.image_size, run.mean, run.std, config.knn_k,
                             config.knn_temperature, linear_max_iter=config.linear_max_iter, device=run.device,
                             seed=config.seed, num_workers=config.num_workers, log=lambda *_: None,
                             pretrained_features=features)
    log(format_table(table))
    return table, features[1]


def backbone_name(config: PretrainConfig) -> str:
    """The backbone in words for the report's title: ``resnet18 at width 0.125`` or ``timm:vit_tiny_patch16_224``."""
    if ":" in config.backbone:
        args = ", ".join(f"{key}={value}" for key, value in (config.backbone_args or {}).items())
        return config.backbone + (f" ({args})" if args else "")
    return config.backbone + (f" at width {config.width:g}" if config.width != 1 else "")
