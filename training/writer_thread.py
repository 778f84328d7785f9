"""Checkpoints committed by a background thread, so training stalls only for the device-to-host copy."""

from __future__ import annotations

import queue
import threading

import torch


class BackgroundWriter:
    """Commits checkpoints in order on a worker thread; at most `depth` are waiting in host memory."""

    def __init__(self, writer, depth: int = 1):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.last_committed: int | None = None
        self.thread = threading.Thread(target=self._loop, name="checkpoint-writer", daemon=True)
        self.thread.start()

    def submit(self, step: int, state: dict[str, torch.Tensor], optimizer_state, tables) -> None:
        """Queue a checkpoint whose tensors are already host copies; re-raises an earlier commit's error."""
        self._raise()
        self.queue.put((step, state, optimizer_state, tables))

    def close(self) -> None:
        """Wait until every queued checkpoint is committed; re-raise a failed commit."""
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure: nothing after a failed step is committed
            step, state, optimizer_state, tables = item
            try:
                self.writer.write_checkpoint(step, state, optimizer_state, tables=tables)
                self.last_committed = step
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def host_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies (pinned, non-blocking from CUDA), safe to hand to another thread."""
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.is_cuda:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            out[name] = host
        else:
            out[name] = t.clone()
    if any(t.is_cuda for t in tensors.values()):
        torch.cuda.synchronize()
    return out
