"""Heat maps of one FPN level: the student's map, the implicit teacher's map and the adapted
student map that the distillation loss compares with it.

Each map is instance-normalised (as the distillation loss sees it) and shown as the L2 norm
over channels at every cell, so the three panels share one scale of meaning.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lgd.distiller import instance_norm  # noqa: E402


@torch.no_grad()
def lgd_heatmaps(model, batched_input: dict, level: str = "p3") -> dict[str, np.ndarray]:
    """The three (H_l, W_l) heat maps of one image, plus the input image and its boxes.

    Args:
        model: a Distill meta-architecture with an ``LGD`` distiller (run in eval mode here,
            with the implicit teacher fed the image's ground truth).
        batched_input: one dataset-mapper dict with ``image`` and ``instances``.
        level: the FPN level to show.

    Returns:
        ``image`` (H, W, 3) uint8 RGB of the padded input, ``boxes`` (N, 4) in its pixels, and
        ``student``, ``teacher``, ``adapted``: (H_l, W_l) float arrays.
    """
    distiller = model.distillers["LGD"]
    was_training = model.training
    model.eval()
    try:
        images = model.preprocess_image([batched_input])
        features = {k: v.float() for k, v in model.backbone(images.tensor).items()}
        if level not in features:
            raise KeyError(f"level {level!r} is not a backbone output ({sorted(features)})")
        gt = [batched_input["instances"].to(images.tensor.device)]
        teacher = distiller.teacher(features, gt, tuple(images.tensor.shape[-2:]))
        student = features[level]
        adapted = distiller.adapter(student)
    finally:
        model.train(was_training)

    def heat(x: torch.Tensor) -> np.ndarray:
        return instance_norm(x).norm(dim=1)[0].cpu().numpy()

    pixels = images.tensor[0] * model.pixel_std + model.pixel_mean
    image = pixels.clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    if model.input_format == "BGR":
        image = image[:, :, ::-1]
    return {
        "image": image,
        "boxes": gt[0].gt_boxes.tensor.cpu().numpy(),
        "student": heat(student),
        "teacher": heat(teacher[level]),
        "adapted": heat(adapted),
    }


def save_heatmaps(maps: dict[str, np.ndarray], path: str, level: str = "p3") -> None:
    """Write the image with its boxes and the three heat maps side by side as a PNG."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    axes[0].imshow(maps["image"])
    for x1, y1, x2, y2 in maps["boxes"]:
        axes[0].add_patch(
            plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=1.5)
        )
    axes[0].set_title("input and ground truth")
    titles = {
        "student": f"student FPN {level}",
        "teacher": f"implicit teacher {level}",
        "adapted": f"adapted student {level}",
    }
    for ax, (key, title) in zip(axes[1:], titles.items()):
        shown = ax.imshow(maps[key], cmap="inferno")
        fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(title)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("per-cell L2 norm over channels of the instance-normalised maps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
