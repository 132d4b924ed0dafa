"""Intra-op threads: only the models' worker threads (service.batching) run torch ops on several threads.

With OpenMP, every thread that runs a parallel torch op gets its own pool of helper threads, and once the helpers
of all pools outnumber the cores, libgomp stops letting idle helpers spin between parallel regions: every region
then pays a sleep and a wake-up. Measured on the 2-core machine (fmnist-resnet34, batch 1, 2 torch threads): the
dense model took 8.4 ms a forward on the main thread and 19-26 ms on a second thread once the main thread had run
torch ops with 2 threads, 9.0 ms when the main thread had been set to 1 thread. So the event loop's thread, the
model loaders and the image decoders run torch with one thread (no helper pool), and each model's worker thread
with ``HASTE_TORCH_THREADS``.
"""

from __future__ import annotations

import torch


def one_thread() -> None:
    """Run this thread's torch ops on this thread alone (no OpenMP helper pool of its own)."""
    torch.set_num_threads(1)


def loaded_with_one_thread(load, *args):
    """``load(*args)`` on this thread with one torch thread (for ``asyncio.to_thread``)."""
    one_thread()
    return load(*args)
