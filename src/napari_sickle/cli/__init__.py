"""The command-line programs: ``train``, ``evaluate``, ``analyze``, ``simulate``, ``demo``.

Each module has a ``main(argv=None) -> int``; ``python -m napari_sickle.<name>`` runs it. The
helpers they share (one-line errors, ``-o KEY=VALUE`` options, strict JSON, data checks) are in
``_common``.
"""
