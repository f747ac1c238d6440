"""BYOL in your own training loop, on your own DataLoader (as lightly's examples do).

selfsup gives the parts: a backbone, the method (BYOL: its heads, target network and loss), its view recipe
and the batched augmentation; the loop is yours. Here the "own data" are the 8x8 digits that ship with
scikit-learn (no download), as a uint8 TensorDataset; any DataLoader of uint8 (B, 3, H, W) images works.

    python examples/byol_own_loop.py --steps 20 --out runs/byol_own_loop

Writes OUT/result.json (the loss of every step, how far the online and target backbones moved) and
OUT/backbone.pt (the trained encoder, which selfsup.load_backbone and selfsup.evaluate read).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import selfsup
from selfsup.data import load_image_data
from selfsup.models import backbone_config


def weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 channel-width multiplier")
    parser.add_argument("--lr", type=float, default=0.06)
    parser.add_argument("--out", default="runs/byol_own_loop", help="folder for result.json and backbone.pt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # Your data: any Dataset of uint8 images (3, H, W). Labels are not needed for pretraining.
    images = load_image_data("digits", "train").images  # (1347, 3, 8, 8) uint8
    loader = DataLoader(TensorDataset(images), batch_size=args.batch_size, shuffle=True, drop_last=True)
    crop_size = 16  # views upscaled to 16 px, as selfsup pretrain does for images under 16 px

    # A backbone (images -> pooled features, feature_dim wide), wrapped in the method.
    backbone = selfsup.ResNetBackbone("resnet18", cifar_stem=True, width=args.width)
    model = selfsup.BYOL(backbone, projection_hidden_dim=512, projection_dim=128, prediction_hidden_dim=512)
    model.to(device)

    # BYOL's two views (its asymmetric recipe), augmented in batches on the device.
    recipes = selfsup.byol_views(crop_size)  # the same as selfsup.BYOL.view_recipes(BYOLSettings(), ...)
    augment = selfsup.BatchedViews(*(selfsup.BatchedViewAugment(recipe) for recipe in recipes)).to(device)

    # The target network has requires_grad=False: only the online network and the predictor are optimized.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9,
                                weight_decay=1e-5)
    online_before, target_before = weights(model.backbone), weights(model.target_backbone)

    losses: list[float] = []
    step = 0
    while step < args.steps:
        for (batch,) in loader:
            if step == args.steps:
                break
            view1, view2 = augment(batch.to(device))
            loss = model(view1, view2).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # The target follows the online network by an EMA whose momentum rises from 0.996 to 1.
            model.update_target(model.momentum_at(step, args.steps))
            losses.append(loss.item())
            if step % 10 == 0 or step == args.steps - 1:
                print(f"step {step:4d}  loss {loss.item():.4f}")
            step += 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The encoder alone, in the format of selfsup pretrain's backbone.pt (what selfsup.load_backbone reads).
    torch.save({"backbone": model.backbone.state_dict(), "backbone_config": backbone_config(model.backbone),
                "image_size": crop_size, "mean": list(recipes[0].mean), "std": list(recipes[0].std)},
               out / "backbone.pt")
    result = {
        "steps": step,
        "losses": losses,
        "finite": all(math.isfinite(value) for value in losses),
        "online_backbone_change": (weights(model.backbone) - online_before).norm().item(),
        "target_backbone_change": (weights(model.target_backbone) - target_before).norm().item(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'result.json'} and {out / 'backbone.pt'}")


if __name__ == "__main__":
    main()
