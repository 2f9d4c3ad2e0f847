"""Entry point for `python -m napari_sickle.analyze`; the command lives in napari_sickle.cli.analyze."""

from .cli.analyze import main

if __name__ == "__main__":  # pragma: no cover
    from .training.distributed import exit_process

    exit_process(main())
