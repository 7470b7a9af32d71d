"""EoMT's padded-inference input: an image resized to fit the model and padded bottom/right.

Why a module: evaluation, periodic evaluation and the query diagnostics must prepare
images identically, or their numbers would not compare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from tokenmask_ros.model.postprocess import Letterbox


def plain_image(image) -> torch.Tensor:
    """A plain tensor view of an image (tv_tensors.Image or array-like)."""
    return image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else \
        torch.as_tensor(image)


def preprocess(image: torch.Tensor, input_size: tuple[int, int]
               ) -> tuple[torch.Tensor, Letterbox]:
    """A uint8 ``[3, H, W]`` image as a float ``[3, *input_size]`` network input in [0, 1].

    EoMT's inference preprocessing: resize (bilinear, antialiased) so the image just fits
    ``input_size``, then zero-pad bottom/right; the :class:`Letterbox` says where it sits.
    """
    image = plain_image(image)
    letterbox = Letterbox.fit(image.shape[-2:], input_size)
    if tuple(image.shape[-2:]) != letterbox.content_size:
        image = TF.resize(image, list(letterbox.content_size), antialias=True)
    pad_h = input_size[0] - letterbox.content_size[0]
    pad_w = input_size[1] - letterbox.content_size[1]
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
    return image.float() / 255.0, letterbox


def forward_padded(model, images, device):
    """One batched forward pass over letterboxed ``images``; the output and each letterbox."""
    input_size = tuple(model.config.img_size)
    inputs, boxes = zip(*(preprocess(image, input_size) for image in images), strict=True)
    return model(torch.stack(inputs).to(device)), boxes
