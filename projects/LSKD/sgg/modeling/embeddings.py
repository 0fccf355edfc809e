"""Inputs shared by the predicate predictors: object class embeddings and box geometry.

The benchmark initialises class embeddings from GloVe 6B 200-d vectors. Nothing downloads here:
the embeddings are learned from a random init, or initialised from a user-supplied file
(``MODEL.ROI_RELATION_HEAD.EMBED_FILE``, a (C, EMBED_DIM) ``.npy`` or ``.pt`` array, e.g. GloVe
vectors of the class names).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from distill.checkpoint import expand_path, read_weights_file
from distill.errors import ConfigValueError, MissingFileError


def class_embedding(num_classes: int, dim: int, path: str = "") -> nn.Embedding:
    """An (num_classes, dim) embedding, from ``path`` when given (checked shape), else N(0, 1)."""
    embedding = nn.Embedding(num_classes, dim)
    if not path:
        return embedding
    path = expand_path(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"MODEL.ROI_RELATION_HEAD.EMBED_FILE: no file at {path!r}")
    key = "MODEL.ROI_RELATION_HEAD.EMBED_FILE"
    if path.endswith((".pt", ".pth")):
        vectors = read_weights_file(path, key)  # no code runs from the file
    else:
        try:
            vectors = np.load(path)  # arrays only: numpy refuses pickled objects
        except (ValueError, OSError, EOFError) as e:
            raise ConfigValueError(f"{key}: {path!r} is not a readable .npy array: {e}") from None
    vectors = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    if tuple(vectors.shape) != (num_classes, dim):
        raise ConfigValueError(
            f"MODEL.ROI_RELATION_HEAD.EMBED_FILE {path!r} holds a {tuple(vectors.shape)} array; "
            f"expected (NUM_CLASSES, EMBED_DIM) = ({num_classes}, {dim})"
        )
    with torch.no_grad():
        embedding.weight.copy_(vectors)
    return embedding


def soft_label_embedding(
    embedding: nn.Embedding, det_logits: torch.Tensor | None, labels: torch.Tensor | None
) -> torch.Tensor:
    """(N, dim) embeddings: of the GT ``labels`` when given (PredCls), else the detector's
    foreground softmax times the embedding matrix (SGCls / SGDet).

    Args:
        det_logits: (N, C + 1) detector class logits, background last.
        labels: (N,) long classes 0 .. C-1, or None.
    """
    if labels is not None:
        return embedding(labels)
    probs = det_logits.float().softmax(dim=1)[:, :-1]
    return probs @ embedding.weight


def box_geometry(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The 9-d box description of the benchmark: (N, 4) XYXY -> (N, 9), all divided by the image
    size: width, height, centre x, centre y, x1, y1, x2, y2, area.

    Args:
        boxes: (N, 4) XYXY boxes in pixels of an image of ``image_size`` = (height, width).
    """
    height, width = image_size
    x1, y1, x2, y2 = boxes.float().unbind(dim=1)
    w, h = x2 - x1, y2 - y1
    return torch.stack(
        [
            w / width,
            h / height,
            (x1 + 0.5 * w) / width,
            (y1 + 0.5 * h) / height,
            x1 / width,
            y1 / height,
            x2 / width,
            y2 / height,
            w * h / (width * height),
        ],
        dim=1,
    )


def position_embedding(out_dim: int = 128) -> nn.Sequential:
    """Linear(9, 32) -> BatchNorm -> Linear(32, out_dim) -> ReLU, the benchmark's box encoder."""
    return nn.Sequential(
        nn.Linear(9, 32), nn.BatchNorm1d(32), nn.Linear(32, out_dim), nn.ReLU(inplace=True)
    )
