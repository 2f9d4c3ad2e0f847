"""Entry point for `python -m napari_sickle.simulate`; the command lives in napari_sickle.cli.simulate."""

from .cli.simulate import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
