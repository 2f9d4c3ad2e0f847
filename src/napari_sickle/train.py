"""Entry point for `python -m napari_sickle.train`; the command lives in napari_sickle.cli.train."""

from .cli.train import main

if __name__ == "__main__":  # pragma: no cover
    from .training.distributed import exit_process

    exit_process(main())
