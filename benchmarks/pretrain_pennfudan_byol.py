"""A few minutes of BYOL on the Penn-Fudan training photos (no labels), for the transfer comparison.

A stand-in for a long pretraining run: BYOL (Grill et al. 2020) on random crops of the 120 training
images of the 120/50 split (the test photos are never seen), ResNet-18 at a quarter of its width,
ImageNet stem, 96 px views. Writes a selfsup checkpoint ({"backbone", "backbone_config"}) that
``selfsup transfer detect/segment --checkpoint`` reads.

    python benchmarks/pretrain_pennfudan_byol.py --minutes 6 --out runs/pretrain-pennfudan/backbone.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from selfsup.data.annotations import PennFudan
from selfsup.eval.pretrained import save_atomically
from selfsup.eval.transfer_cli import default_pennfudan_dir
from selfsup.methods import BYOL, cosine_momentum
from selfsup.models.backbones import ResNetBackbone, backbone_config
from selfsup.transforms.views import IMAGENET_MEAN, IMAGENET_STD, byol_views, view_transform


class TwoViews(Dataset):
    """Each photo (short side resized once to ``load_side``) -> BYOL's two asymmetric views."""

    def __init__(self, paths: list[Path], view_size: int, load_side: int) -> None:
        self.images = []
        for path in paths:
            with Image.open(path) as image:
                image = image.convert("RGB")
                scale = load_side / min(image.size)
                self.images.append(image.resize((round(image.width * scale), round(image.height * scale)),
                                                Image.Resampling.BICUBIC))
        first, second = byol_views(view_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.first, self.second = view_transform(first), view_transform(second)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.first(self.images[index]), self.second(self.images[index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_pennfudan_dir())
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget of the training")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--view-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/pretrain-pennfudan/backbone.pt"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train = PennFudan(args.data, "train")
    dataset = TwoViews([train.image_path(i) for i in range(len(train))], args.view_size,
                       load_side=round(args.view_size * 1.5))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    backbone = ResNetBackbone("resnet18", width=args.width)
    # Heads narrower than the paper's 4096 -> 256: the backbone's features are 128-wide here.
    model = BYOL(backbone, projection_hidden_dim=512, projection_dim=128, prediction_hidden_dim=512)
    # AdamW rather than LARS: a batch of 32 for a few hundred steps, where LARS's large-batch tuning
    # does not apply.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=1e-4)
    budget_s = args.minutes * 60
    # The step count is not known in advance (a time budget): the momentum follows a cosine over the
    # estimate made after the first epoch.
    started, step, estimated_steps, losses = time.perf_counter(), 0, None, []
    model.train()
    while time.perf_counter() - started < budget_s:
        for view1, view2 in loader:
            loss = model(view1, view2).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_target(cosine_momentum(step, estimated_steps or 1000, base=0.99))
            losses.append(loss.item())
            step += 1
        if estimated_steps is None:
            estimated_steps = max(round(step * budget_s / (time.perf_counter() - started)), step + 1)
        print(f"step {step}: loss {sum(losses[-len(loader):]) / len(loader):.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    save_atomically({"backbone": backbone.state_dict(), "backbone_config": backbone_config(backbone),
                     "step": step, "method": "byol", "data": "pennfudan-train"}, args.out)
    last_epoch_loss = sum(losses[-len(loader):]) / len(loader)
    print(json.dumps({"steps": step, "first_loss": losses[0], "last_epoch_loss": last_epoch_loss,
                      "seconds": round(time.perf_counter() - started), "checkpoint": str(args.out)}))


if __name__ == "__main__":
    main()
