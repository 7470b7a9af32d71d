"""PyTorch backend: the checkpoint's model in eager mode (or torch.compile), CPU or CUDA.

Shapes are not fixed here, so any batch runs as it is (``batch`` None): a caller with
fewer images than cameras never pads.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.backends.base import Backend, BackendUnavailable
from tokenmask_ros.runtime.graph import DeployGraph


class TorchBackend(Backend):
    name = 'torch'
    batch = None  # any batch: nothing is fixed at export

    def __init__(self, model: torch.nn.Module, device: str = 'cpu', precision: str = 'fp32',
                 compile: bool = False, threads: int | None = None):
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendUnavailable(f'torch backend: device {device!r} requested but CUDA is '
                                     'not available')
        if precision not in ('fp32', 'fp16'):
            raise ValueError(f'precision must be fp32 or fp16, got {precision!r}')
        if precision == 'fp16' and not device.startswith('cuda'):
            raise BackendUnavailable('torch backend: fp16 needs a CUDA device (CPU runs fp32)')
        self.device, self.precision = device, precision
        if threads:  # process-wide: torch has one intra-op pool
            torch.set_num_threads(threads)
        self._torch_device = torch.device(device)
        dtype = torch.float16 if precision == 'fp16' else torch.float32
        # torch.compile traces static shapes; eager runs decode only the kept queries.
        self.graph = DeployGraph(model.to(self._torch_device, dtype).eval(),
                                 selection='fixed' if compile else 'kept')
        self.input_size = self.graph.input_size
        self.decoded_queries = self.graph.decoded_queries
        self._forward = torch.compile(self.graph) if compile else self.graph

    @torch.inference_mode()
    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        self.check_batch(image)
        device = self._torch_device
        pinned = device.type == 'cuda'
        inputs = (torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=pinned),
                  torch.as_tensor(content_size, dtype=torch.int32, device=device),
                  torch.tensor([score_threshold], dtype=torch.float32, device=device))
        outputs = self._forward(*inputs)
        return PanopticScores(*(t.cpu().numpy() for t in outputs))

    def close(self) -> None:
        self.graph = self._forward = None
        if self._torch_device.type == 'cuda':
            torch.cuda.empty_cache()
