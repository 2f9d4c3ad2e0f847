"""Entry point for `python -m napari_sickle.evaluate`; the command lives in napari_sickle.cli.evaluate."""

from .cli.evaluate import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
