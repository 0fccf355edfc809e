"""A training loader whose batches and augmentations are a function of (seed, iteration).

detectron2's training loader draws augmentations from the random state of each loader worker,
which starts afresh when a run resumes, and it groups images by aspect ratio in buffers that a
resumed run starts empty; both make a resumed run see other batches than the uninterrupted one.
Here:

* the index stream is that of detectron2's samplers (seeded, split across ranks as they do);
* batches are formed from the stream *before* mapping: consecutive indices, or with aspect-ratio
  grouping the same buckets detectron2 uses (record ``width > height`` or not), so the batch of
  any iteration is rebuilt by replaying indices alone, without reading an image;
* every sample is mapped under Python's, numpy's and torch's random state seeded from
  (seed, iteration, rank, position in the batch), so its augmentation does not depend on which
  worker maps it or on what ran before;
* a loader worker maps whole batches, workers taking them in turn, and torch's DataLoader
  returns them in order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import (
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distill.errors import ConfigValueError

logger = logging.getLogger(__name__)

# Entropy tags keeping the model's per-iteration seed apart from the samples' seeds.
_MODEL_TAG, _SAMPLE_TAG = 0, 1
_MAX_MAPPER_RETRIES = 100


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed that is a deterministic function of non-negative integers."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def seed_iteration(seed: int, iteration: int, rank: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global random state for one training
    iteration, so that random choices in the model (e.g. RoI sampling) do not depend on where
    the run started."""
    _seed_all(derive_seed(seed, iteration, rank, _MODEL_TAG))


def _seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


@contextlib.contextmanager
def seeded_random_state(value: int) -> Iterator[None]:
    """Run the body with all global random states seeded to ``value``, then restore them."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _seed_all(value)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def build_train_sampler(cfg, dataset_dicts: Sequence[dict], seed: int):
    """detectron2's training sampler named by ``DATALOADER.SAMPLER_TRAIN``, seeded by ``seed``."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        return TrainingSampler(len(dataset_dicts), seed=seed)
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        return RepeatFactorTrainingSampler(factors, seed=seed)
    if name == "RandomSubsetTrainingSampler":
        return RandomSubsetTrainingSampler(
            len(dataset_dicts), cfg.DATALOADER.RANDOM_SUBSET_RATIO,
            seed_shuffle=seed, seed_subset=seed,
        )  # fmt: skip
    raise ConfigValueError(
        f"DATALOADER.SAMPLER_TRAIN {name!r} is not one of TrainingSampler, "
        "RepeatFactorTrainingSampler, RandomSubsetTrainingSampler"
    )


def aspect_buckets(dataset_dicts: Sequence[dict]) -> list[int]:
    """detectron2's aspect-ratio bucket of each record: 0 when wider than tall, else 1."""
    buckets = []
    for record in dataset_dicts:
        if "width" not in record or "height" not in record:
            raise ConfigValueError(
                "DATALOADER.ASPECT_RATIO_GROUPING needs 'width' and 'height' in every dataset "
                f"record; {record.get('file_name', record.get('image_id'))!r} has none: set "
                "DATALOADER.ASPECT_RATIO_GROUPING False"
            )
        buckets.append(0 if record["width"] > record["height"] else 1)
    return buckets


def group_batches(
    indices: Iterable[int], batch_size: int, buckets: Sequence[int] | None = None
) -> Iterator[list[int]]:
    """Batches of ``batch_size`` indices: consecutive ones, or (with ``buckets``) indices of the
    same bucket in stream order, a batch being emitted when its bucket fills."""
    if buckets is None:
        iterator = iter(indices)
        while batch := list(itertools.islice(iterator, batch_size)):
            yield batch
        return
    pending: dict[int, list[int]] = {}
    for index in indices:
        bucket = pending.setdefault(buckets[index], [])
        bucket.append(index)
        if len(bucket) == batch_size:
            yield bucket[:]
            bucket.clear()


class SeededBatchStream(IterableDataset):
    """The mapped batches of one rank from iteration ``start_iter`` on (see the module doc).

    Args:
        dataset_dicts: the training records (held serialized, as detectron2's loader does).
        mapper: record -> model input dict, or None to skip the record (another one is drawn).
        sampler: a detectron2 training sampler; iterating it yields this rank's indices.
        batch_size: images per batch on this rank.
        aspect_ratio_grouping: group by detectron2's aspect-ratio buckets.
        seed: the run's seed; sample ``j`` of iteration ``i`` is mapped under
            ``derive_seed(seed, i, rank, 1, j)``.
        start_iter: the iteration of the first batch.
    """

    def __init__(self, dataset_dicts: Sequence[dict], mapper: Callable[[dict], dict | None],
                 sampler, batch_size: int, aspect_ratio_grouping: bool, seed: int,
                 start_iter: int = 0):  # fmt: skip
        self._buckets = aspect_buckets(dataset_dicts) if aspect_ratio_grouping else None
        self._records = DatasetFromList(list(dataset_dicts), copy=False, serialize=True)
        self._mapper = mapper
        self._sampler = sampler
        self._batch_size = batch_size
        self._seed = seed
        self._start_iter = start_iter
        self._rank = comm.get_rank()

    def __iter__(self) -> Iterator[list[dict]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        batches = group_batches(iter(self._sampler), self._batch_size, self._buckets)
        numbered = enumerate(itertools.islice(batches, self._start_iter, None), self._start_iter)
        for iteration, batch in itertools.islice(numbered, worker_id, None, num_workers):
            yield [self._map(iteration, j, index) for j, index in enumerate(batch)]

    def _map(self, iteration: int, position: int, index: int) -> dict:
        with seeded_random_state(derive_seed(self._seed, iteration, self._rank, _SAMPLE_TAG,
                                             position)):  # fmt: skip
            for attempt in range(_MAX_MAPPER_RETRIES):
                data = self._mapper(self._records[index])
                if data is not None:
                    return data
                if attempt == 2:
                    logger.warning(f"the mapper skipped 3 records in a row, last index {index}")
                index = random.randrange(len(self._records))  # seeded above: reproducible
        raise ConfigValueError(
            f"the dataset mapper skipped {_MAX_MAPPER_RETRIES} training records in a row "
            f"(iteration {iteration}); check the dataset and DATALOADER.FILTER_EMPTY_ANNOTATIONS"
        )


def build_seeded_train_loader(cfg, dataset_dicts: Sequence[dict], mapper, seed: int,
                              start_iter: int = 0) -> DataLoader:  # fmt: skip
    """The training loader of ``cfg`` (``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH``) as a
    :class:`SeededBatchStream` from ``start_iter``: an infinite iterable of per-rank batches
    (lists of mapped dicts)."""
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world_size:
        raise ConfigValueError(
            f"SOLVER.IMS_PER_BATCH {total} must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    stream = SeededBatchStream(
        dataset_dicts,
        mapper,
        build_train_sampler(cfg, dataset_dicts, seed),
        total // world_size,
        cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        seed,
        start_iter,
    )
    return DataLoader(
        stream, batch_size=None, num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )  # fmt: skip
