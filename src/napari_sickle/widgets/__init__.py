"""Thin magicgui/Qt front ends over napari_sickle.analysis and napari_sickle.training."""
