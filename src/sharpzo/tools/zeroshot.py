"""Zero-shot accuracy of an open_clip model on each dataset's held-out evaluation set of the protocol.

``python -m sharpzo.tools.zeroshot`` scores the stand-in; ``--model ViT-B-32 --pretrained openai``
scores real CLIP where its weights can be had.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import open_clip
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from sharpzo.data.base import LabeledImages
from sharpzo.data.catalog import DATASETS
from sharpzo.data.fewshot import downstream_split
from sharpzo.data.image_io import decode_rgb
from sharpzo.data.locate import DatasetNotInstalledError
from sharpzo.server.project_models import DEFAULT_MODEL, register_project_configs, shipped_weights

TEMPLATE = "a photo of a {}."


@torch.no_grad()
def zero_shot_accuracy(
    model: open_clip.CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    preprocess: Callable[[Image.Image], torch.Tensor],
    data: LabeledImages,
    batch_size: int = 256,
) -> float:
    """Share of images whose most similar class prompt ("a photo of a {class}.") is their own class."""
    model.eval()
    text = model.encode_text(tokenizer([TEMPLATE.format(name) for name in data.class_names]), normalize=True)
    correct = 0
    for start in range(0, len(data), batch_size):
        chunk = data.images[start : start + batch_size]
        pixels = torch.stack([preprocess(decode_rgb(b)) for b in chunk])
        predicted = (model.encode_image(pixels, normalize=True) @ text.T).argmax(dim=1).numpy()
        correct += int((predicted == data.labels[start : start + batch_size]).sum())
    return correct / len(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sharpzo.tools.zeroshot", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"open_clip model name (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--pretrained", default=None, help="pretrained tag or checkpoint path (default: the model's shipped weights)"
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--split", choices=("eval", "val"), default="eval", help="protocol set to score")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    register_project_configs()
    if args.pretrained is None:
        args.pretrained = str(shipped_weights(args.model))
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
    tokenizer = open_clip.get_tokenizer(args.model)

    table = Table(title=f"zero-shot, '{TEMPLATE}', {args.model} ({args.pretrained})")
    for column in ("dataset", "classes", f"{args.split} images", "chance", "accuracy"):
        table.add_column(column, justify="left" if column == "dataset" else "right")
    console = Console()
    for name in args.datasets:
        try:
            data = getattr(downstream_split(name), args.split)
        except DatasetNotInstalledError as error:
            console.print(f"skipping {name}: {error}")
            continue
        accuracy = zero_shot_accuracy(model, tokenizer, preprocess, data)
        n_classes = len(data.class_names)
        table.add_row(name, str(n_classes), str(len(data)), f"{1 / n_classes:.1%}", f"{accuracy:.1%}")
    console.print(table)


if __name__ == "__main__":
    main()
