"""The training data stream: seeded augmentation, a sampler that can start mid-epoch and
endless micro-batches, so a resumed run sees exactly the batches a straight run would."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from training.datasets.common import collate
from training.datasets.transforms import TrainTransform


class SeededTransform(Dataset):
    """Applies the augmentation under a seed fixed by (seed, epoch, index).

    Why: augmentation then does not depend on worker count or on where a run was resumed,
    which makes resuming exact.
    """

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.transform(*sample)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (``skip`` samples per replica)."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def build_loader(raw_dataset, img_size, data, seed: int, world: int, rank: int,
                 per_process: int, pin_memory: bool):
    """The augmented dataset, its sampler and the loader of ``per_process`` samples each."""
    dataset = SeededTransform(raw_dataset, TrainTransform(
        img_size, tuple(data.scale_range), color_jitter=data.color_jitter), seed)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                               seed=seed, drop_last=True)
    loader = DataLoader(dataset, per_process, sampler=sampler, collate_fn=collate,
                        num_workers=data.num_workers, drop_last=True, pin_memory=pin_memory,
                        # its own generator: starting an epoch must not draw from the global
                        # RNG, or a resumed run would diverge from a straight one
                        generator=torch.Generator().manual_seed(seed))
    return dataset, sampler, loader


def batches(loader: DataLoader, sampler: ResumableSampler, dataset: SeededTransform,
            start: int):
    """Endless micro-batches starting at micro-batch ``start`` (epochs re-shuffled)."""
    per_epoch = len(loader)
    epoch, offset = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        dataset.epoch = epoch
        sampler.skip = offset * loader.batch_size
        yield from loader
        epoch, offset = epoch + 1, 0

