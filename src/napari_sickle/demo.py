"""Entry point for `python -m napari_sickle.demo`; the command lives in napari_sickle.cli.demo."""

from .cli.demo import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
