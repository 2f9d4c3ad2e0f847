"""The command-line programs: ``train``, ``evaluate``, ``analyze``, ``simulate``, ``demo``.

Each module has a ``main(argv=None) -> int``; ``python -m napari_sickle.<name>`` runs it. What
they share (one-line errors, ``-o KEY=VALUE`` options, strict JSON, data checks) is in
``_common``.
"""
