"""The data set type of selfsup, and matching a test split's labels to a training split's classes."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch


@dataclass
class ImageData:
    """A data set: either ``images`` in memory (uint8, (N, 3, H, W)) or ``paths`` on disk.

    - ``labels`` (int64, (N,)) and ``classes`` are None for unlabeled data; ``labels[i]`` indexes ``classes``.
    - ``named_classes``: the class names identify classes across data sets (class folder names), so
      :func:`match_classes` matches a test split to them by name. False for arrays and built-in sets,
      whose labels are positions.
    - ``empty_classes``: class folders with no images, left out of ``classes`` (reported, see match_classes).
    - ``source``: the folder or file the data came from, for messages (None for built-in sets).
    - ``skipped``: files left out by ``skip_bad_images``, with the reason.
    - ``resized``: how many images of another size than the data set's were resized (and center-cropped)
      to it when decoded into memory.
    - ``notes``: one-line messages for the user about how the data was read (resized images, empty class
      folders, training classes missing from a test split); the caller logs them.
    """

    name: str
    images: torch.Tensor | None = None
    paths: list[Path] | None = None
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    named_classes: bool = False
    empty_classes: list[str] = field(default_factory=list)
    source: str | None = None
    resized: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("ImageData needs exactly one of images (in memory) or paths (on disk)")
        if self.images is not None and (self.images.dtype != torch.uint8 or self.images.ndim != 4
                                        or self.images.shape[1] != 3):
            raise ValueError(f"in-memory images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self)} images")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.paths)  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def image_side(self) -> int | None:
        """Side of the in-memory images (None for data on disk)."""
        return int(self.images.shape[-1]) if self.images is not None else None


def quoted(names: list[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'``, the first ``limit`` names then ``and N more``, for one-line messages."""
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _where(data: ImageData) -> str:
    return data.source or data.name


def _class_count(data: ImageData) -> int:
    if data.classes:
        return len(data.classes)
    return int(data.labels.max()) + 1 if data.labels is not None and len(data.labels) else 0


def match_classes(train: ImageData, test: ImageData) -> ImageData:
    """``test`` with its labels re-indexed into ``train.classes``, so that label k means the same class in
    both (what kNN and the linear probe compare).

    - Both folders (``named_classes``): matched by class name. A training class with no test images is
      allowed: the returned data gets a line in ``notes`` naming it (the accuracy is over the other classes).
    - Otherwise (arrays, built-in sets, or one of each): by position; both need the same number of classes.

    The returned data has ``classes`` = ``train.classes``; it is ``test`` otherwise unchanged.

    Raises:
        ValueError (one line naming the data and what to do): either has no labels; either has a class
            folder with no images; a test class is not a training class; the numbers of classes differ
            when matching by position.
    """
    for data, role in ((train, "training"), (test, "test")):
        if data.labels is None:
            raise ValueError(f"{role} data {_where(data)} has no labels; the kNN / linear evaluation needs "
                             "labelled data (a folder with one sub-folder of images per class)")
        if data.empty_classes:
            raise ValueError(f"class folder(s) {quoted(data.empty_classes)} of the {role} data {_where(data)} "
                             "have no images; add images to them or remove them, so that both data sets have the "
                             "same classes")
    if not (train.named_classes and test.named_classes):
        n_train, n_test = _class_count(train), _class_count(test)
        if n_train != n_test:
            raise ValueError(f"the training data {_where(train)} has {n_train} classes and the test data "
                             f"{_where(test)} {n_test}; labels of arrays and built-in data sets are matched by "
                             "position, so both need the same classes (or use two class folders, matched by "
                             "name)")
        return replace(test, classes=list(train.classes) if train.classes else test.classes)
    index = {name: i for i, name in enumerate(train.classes)}  # type: ignore[arg-type]
    unknown = [name for name in test.classes if name not in index]  # type: ignore[union-attr]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(index), n=1)
        hint = f" (is '{unknown[0]}' meant to be '{close[0]}'?)" if close else ""
        raise ValueError(f"the test data {_where(test)} has class folder(s) {quoted(unknown)} that the training "
                         f"data {_where(train)} does not have{hint}; rename or remove them, so that every test "
                         "class is a training class")
    mapping = torch.tensor([index[name] for name in test.classes], dtype=torch.int64)  # type: ignore[union-attr]
    missing = [name for name in train.classes if name not in set(test.classes)]  # type: ignore[union-attr,arg-type]
    notes = list(test.notes)
    if missing:
        notes.append(f"the test data {_where(test)} has no images of {len(missing)} of the "
                     f"{len(index)} training classes ({quoted(missing)}); its accuracy is over the others")
    return replace(test, labels=mapping[test.labels], classes=list(train.classes), notes=notes)  # type: ignore
