"""A tqdm progress bar for dask computations on the local schedulers."""

from __future__ import annotations

from dask.callbacks import Callback
from tqdm.auto import tqdm


class TqdmDaskProgress(Callback):
    """Counts finished tasks of each compute call; use as a context manager around ``compute``."""

    def __init__(self, description: str, enabled: bool = True):
        super().__init__()
        self.description = description
        self.enabled = enabled
        self._bar: tqdm | None = None

    def _start_state(self, dsk, state):
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = tqdm(total=total, desc=self.description, unit="task", disable=not self.enabled,
                         leave=False, dynamic_ncols=True)

    def _posttask(self, key, result, dsk, state, worker_id):
        if self._bar is not None:
            self._bar.update(1)

    def _finish(self, dsk, state, errored):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
