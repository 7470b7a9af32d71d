"""EoMT's sliding-window semantic inference (the ADE20K mIoU protocol).

Why separate from padded inference: it resizes the image to cover the input rather than fit
it, and averages several windows per image; only mIoU uses it.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

from tokenmask_ros.model.postprocess import resize_logits, semantic_scores
from training.letterbox import plain_image


def semantic_windows(image_size, input_size) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """EoMT's sliding-window layout: the resized image size and each window's (top, left).

    The image is scaled by ``max(in_h / H, in_w / W)``, so it covers the ``input_size``
    window with one side equal to it (for a square input: the shorter side becomes the
    input size). Along the other side, of length ``L`` and window size ``S``, EoMT's
    ``window_imgs_semantic`` places ``n = ceil(L / S)`` windows spreading the overlap
    ``n S - L`` evenly: window ``j`` starts at ``int(j (S - (n S - L) / (n - 1)))``. That
    floor is computed in integers here, so the last window ends exactly at ``L`` and every
    pixel is covered.
    """
    height, width = (int(s) for s in image_size)
    in_h, in_w = (int(s) for s in input_size)
    scale = max(in_h / height, in_w / width)
    resized = (max(in_h, round(height * scale)), max(in_w, round(width * scale)))
    axis = 0 if resized[0] > in_h else 1
    length, window = resized[axis], (in_h, in_w)[axis]
    count = math.ceil(length / window)
    overlap = count * window - length
    starts = [0] if count == 1 else \
        [j * (window * (count - 1) - overlap) // (count - 1) for j in range(count)]
    return resized, [(start, 0) if axis == 0 else (0, start) for start in starts]


@torch.inference_mode()
def sliding_window_semantic(model, image: torch.Tensor,
                            device: str | torch.device = 'cpu') -> torch.Tensor:
    """Per-class semantic scores ``[C, H, W]`` of one uint8 ``[3, H, W]`` image, EoMT's
    sliding-window evaluation (argmax over dim 0 gives the class map).

    The image is resized (bilinear, antialiased) to the :func:`semantic_windows` size; all
    its windows go through the model as one batch; each window's :func:`semantic_scores`
    (mask logits upsampled to the window first) are summed into the resized image and
    divided by the number of windows covering each pixel; the average is bilinearly
    resized to the original image size.
    """
    image = plain_image(image)
    image_size = tuple(image.shape[-2:])
    input_size = tuple(model.config.img_size)
    resized, corners = semantic_windows(image_size, input_size)
    if image_size != resized:
        image = TF.resize(image, list(resized), antialias=True)
    in_h, in_w = input_size
    crops = torch.stack([image[:, top:top + in_h, left:left + in_w] for top, left in corners])
    output = model((crops.float() / 255.0).to(device))
    scores = semantic_scores(output.class_logits, output.mask_logits, input_size)
    sums = scores.new_zeros((scores.shape[1], *resized))
    counts = scores.new_zeros((1, *resized))
    for (top, left), window_scores in zip(corners, scores, strict=True):
        sums[:, top:top + in_h, left:left + in_w] += window_scores
        counts[:, top:top + in_h, left:left + in_w] += 1
    return resize_logits((sums / counts)[None], image_size)[0]

