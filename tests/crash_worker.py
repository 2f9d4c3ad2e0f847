"""``python -m napari_sickle.train`` with one worker that crashes, for tests/test_distributed.py.

torchrun runs this file instead of the module. ``FAIL_AT=RANK:EPOCH`` makes that rank exit
abruptly (``os._exit(17)``) when it logs that epoch on torchrun's first attempt
(``TORCHELASTIC_RESTART_COUNT`` 0), as a crashed worker would; later attempts run normally.
"""

import os
import sys

from napari_sickle.cli import train
from napari_sickle.training.distributed import exit_process


def _crashing(log):
    fail_rank, _, fail_epoch = os.environ["FAIL_AT"].partition(":")

    def hooked(record: dict) -> None:
        if log is not None:
            log(record)
        if (
            record.get("event") == "epoch"
            and str(record.get("epoch")) == fail_epoch
            and os.environ.get("RANK", "0") == fail_rank
        ):
            os._exit(17)

    return hooked


if __name__ == "__main__":
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        build = train.build_kwargs
        train.build_kwargs = lambda args, progress, log: build(args, progress, _crashing(log))
    exit_process(train.main(sys.argv[1:]))
