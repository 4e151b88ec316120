"""White-box references (server side, backprop): the headroom above zero-shot on the protocol.

    python bench/whitebox.py --dataset groceries --shots 16 --seeds 0 1 2                    # CoOp, text prompts
    python bench/whitebox.py --dataset groceries --seeds 0 --lr 1e-3 2e-3 5e-3 1e-2 --steps 200 600   # chosen on val
    python bench/whitebox.py --prompt joint --dataset fashion-mnist --shots 4 --seeds 0 1 2 --lr 1e-3 1e-2

Loads the served model in-process (SHARPZO_MODEL / SHARPZO_PRETRAINED, default the stand-in), encodes the
few-shot, validation and held-out images once, then trains with Adam through the frozen towers (tools/whitebox.py):
`--prompt text` is CoOp (the 4 context vectors of "a photo of a"), `visual` is VPT-shallow (--visual-tokens
tokens after the image tower's class token, the text prompt held at p0) and `joint` both. This is the upper
reference the black-box methods are measured against; it never runs in the client. Given several learning rates
or step counts it runs every pair and reports the one with the best mean validation accuracy (never the test set)
as the result. A visual lr is in the stems' units: --lr times the stems' spread over the token embeddings'.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sharpzo.data.base import LabeledImages
from sharpzo.data.fewshot import few_shot_task
from sharpzo.data.image_io import decode_rgb
from sharpzo.server.images import encode_images, encode_stems
from sharpzo.server.model import LoadedModel, load_model
from sharpzo.server.settings import ServerSettings
from sharpzo.server.text import PromptedTextEncoder
from sharpzo.server.visual import PromptedImageEncoder, visual_refusal
from sharpzo.tools.whitebox import PromptLoss, Tuned, WhiteBoxPrompt, train_prompt, visual_start


def split_loss(
    loaded: LoadedModel, encoder: PromptedTextEncoder, image_encoder: PromptedImageEncoder | None,
    class_names: list[str], images: LabeledImages,
) -> PromptLoss:
    decoded = [decode_rgb(b) for b in images.images]
    stems = None if image_encoder is None else encode_stems(loaded, decoded, image_encoder).clone()
    return PromptLoss(encoder, loaded.logit_scale, class_names, encode_images(loaded, decoded),
                      torch.as_tensor(images.labels), image_encoder, stems)


def run_setting(
    starts: dict[int, WhiteBoxPrompt], losses: dict[int, dict[str, PromptLoss]], tuned: Tuned, lr: float,
    visual_lr: float, steps: int,
) -> dict[str, object]:
    rows = []
    for seed, split in losses.items():
        torch.manual_seed(seed)
        started = time.perf_counter()
        zero_shot = WhiteBoxPrompt(starts[seed].ctx)
        prompt, history = train_prompt(split["train"], starts[seed], tuned, steps, lr, visual_lr)
        rows.append({
            "seed": seed,
            "zero_shot_test": split["test"].accuracy(zero_shot),
            "zero_shot_val": split["val"].accuracy(zero_shot),
            "tuned_test": split["test"].accuracy(prompt),
            "tuned_val": split["val"].accuracy(prompt),
            "train_loss_start": history[0],
            "train_loss_end": history[-1],
            "seconds": time.perf_counter() - started,
        })
    keys = ("zero_shot_test", "zero_shot_val", "tuned_test", "tuned_val")
    mean = {key: float(np.mean([r[key] for r in rows])) for key in keys}
    gain = [r["tuned_test"] - r["zero_shot_test"] for r in rows]
    print(f"lr {lr:g}, {steps} steps: val {mean['tuned_val']:.1%} (zero-shot {mean['zero_shot_val']:.1%}), "
          f"test {mean['tuned_test']:.1%} (zero-shot {mean['zero_shot_test']:.1%})", flush=True)
    return {
        "steps": steps, "lr": lr, "visual_lr": visual_lr if tuned != "text" else None, "runs": rows,
        "zero_shot_test_mean": mean["zero_shot_test"], "zero_shot_val_mean": mean["zero_shot_val"],
        "tuned_val_mean": mean["tuned_val"], "tuned_test_mean": mean["tuned_test"],
        "gain_test_mean": float(np.mean(gain)),
        "gain_test_se": float(np.std(gain, ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompt", choices=["text", "visual", "joint"], default="text",
                        help="what is trained: text (CoOp), visual (VPT-shallow) or joint (both)")
    parser.add_argument("--visual-tokens", type=int, default=4, help="m_v, for --prompt visual and joint")
    parser.add_argument("--steps", type=int, nargs="+", default=[200], help="Adam steps (full batch); several: a sweep")
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-3], help="Adam learning rate; several: a sweep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/whitebox.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(ServerSettings())
    encoder = PromptedTextEncoder(loaded)
    _, p0 = encoder.token_embeddings("a photo of a")
    image_encoder = None
    if args.prompt != "text":
        refusal = visual_refusal(loaded.model, args.visual_tokens)
        if refusal is not None:
            raise SystemExit(f"--prompt {args.prompt}: {refusal}")
        image_encoder = PromptedImageEncoder(loaded.model, chunk_tokens=1 << 16)
    losses, starts = {}, {}
    for seed in args.seeds:
        task = few_shot_task(args.dataset, args.shots, seed)
        losses[seed] = {name: split_loss(loaded, encoder, image_encoder, task.class_names, part)
                        for name, part in (("train", task.train), ("val", task.val), ("test", task.test))}
        stems = losses[seed]["train"].stems
        visual = None if stems is None else visual_start(args.visual_tokens, stems.shape[-1],
                                                         float(stems[:, 1:].std()), seed)
        starts[seed] = WhiteBoxPrompt(p0, visual)
    first_stems = losses[args.seeds[0]]["train"].stems
    ratio = 1.0 if first_stems is None else float(first_stems[:, 1:].std() / p0.std())
    sweep = [run_setting(starts, losses, args.prompt, lr, lr * ratio, steps) for lr in args.lr for steps in args.steps]
    chosen = max(sweep, key=lambda setting: setting["tuned_val_mean"])  # the first of equals: the grid's order
    summary = {"dataset": args.dataset, "shots": args.shots, "prompt": args.prompt, "model": loaded.name,
               "pretrained": loaded.pretrained, "seeds": args.seeds, **chosen}
    if args.prompt != "text":
        summary["visual_tokens"] = args.visual_tokens
    if len(sweep) > 1:
        summary["selected_on"] = "tuned_val_mean"
        summary["sweep"] = [{k: v for k, v in setting.items() if k != "runs"} for setting in sweep]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    se = "" if chosen["gain_test_se"] is None else f" ± {chosen['gain_test_se']:.1%} (SE, paired)"
    print(f"{args.dataset} {args.shots}-shot, {args.prompt}: zero-shot {summary['zero_shot_test_mean']:.1%}, "
          f"white-box (lr {chosen['lr']:g}, {chosen['steps']} steps) {summary['tuned_test_mean']:.1%}: "
          f"{chosen['gain_test_mean']:+.1%}{se} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
