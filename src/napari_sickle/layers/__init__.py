"""The one place that turns result objects into napari layers.

Everything here returns napari ``LayerDataTuple``s ``(data, kwargs, layer_type)`` or
updates a viewer in place; the analysis code never touches napari. Sub-modules
(``rbc``, ``bm``, ``segmentation``) convert each kind of result.
"""
from __future__ import annotations

from typing import Any

LayerDataTuple = tuple  # (data, kwargs, layer_type)


def spatial_kwargs(source_layer) -> dict:
    """scale/translate of ``source_layer`` restricted to its last two (spatial) axes."""
    if source_layer is None:
        return {}
    ndim_sp = 2
    scale = tuple(source_layer.scale)[-ndim_sp:]
    translate = tuple(source_layer.translate)[-ndim_sp:]
    return {"scale": scale, "translate": translate}


def upsert_layer(viewer, ldt: LayerDataTuple) -> Any:
    """Add the layer, or update the existing layer of the same name and type in place."""
    data, kwargs, layer_type = ldt
    name = kwargs.get("name")
    if name is not None and name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == layer_type:
            _update_in_place(layer, data, kwargs, layer_type)
            return layer
        viewer.layers.remove(layer)
    adder = getattr(viewer, f"add_{layer_type}")
    return adder(data, **kwargs)


def _update_in_place(layer, data, kwargs, layer_type):
    kwargs = dict(kwargs)
    kwargs.pop("name", None)
    if layer_type == "shapes":
        # Replace data and features together so rows stay aligned.
        features = kwargs.pop("features", None)
        shape_type = kwargs.pop("shape_type", "rectangle")
        text = kwargs.pop("text", None)
        edge_color = kwargs.pop("edge_color", None)
        face_color = kwargs.pop("face_color", None)
        layer.selected_data = set()
        layer.data = []
        if len(data):
            layer.add(list(data), shape_type=shape_type)
        if features is not None:
            layer.features = features
        if text is not None:
            layer.text = text
        if edge_color is not None:
            layer.edge_color = edge_color
        if face_color is not None:
            layer.face_color = face_color
    else:
        layer.data = data
        features = kwargs.pop("features", None)
        if features is not None and hasattr(layer, "features"):
            layer.features = features
    for key in ("scale", "translate", "metadata", "opacity", "colormap", "blending", "contrast_limits"):
        if key in kwargs:
            try:
                setattr(layer, key, kwargs[key])
            except Exception:
                pass
    return layer
