"""The plugin's npe2 contributions named in ``napari.yaml``: the reader (``_reader``), the
writers (``_writer``) and the sample data (``_sample_data``). Widgets are in ``widgets/``."""
