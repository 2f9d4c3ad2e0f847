"""The one place that turns result objects into napari layers.

Everything here returns napari ``LayerDataTuple``s ``(data, kwargs, layer_type)`` or
updates a viewer in place; the analysis code never touches napari. Sub-modules
(``rbc``, ``bm``, ``segmentation``) convert each kind of result.
"""

from __future__ import annotations

from typing import Any

LayerDataTuple = tuple  # (data, kwargs, layer_type)

#: metadata key marking a layer as a napari-sickle result; only such layers are updated in
#: place, so a result never overwrites an input layer that happens to have the same name.
OUTPUT_KEY = "napari_sickle_output"


#: layer attributes that napari's ``add_*`` methods do not take as keywords
SET_AFTER = ("contour", "canvas_size_limits")


def is_output(layer) -> bool:
    return bool(getattr(layer, "metadata", {}).get(OUTPUT_KEY))


def free_name(viewer, name: str, layer_type: str) -> str:
    """``name`` if it is unused or names a result layer of ``layer_type``, else ``name (2)``, …"""
    candidate, k = name, 1
    while candidate in viewer.layers:
        layer = viewer.layers[candidate]
        if is_output(layer) and layer._type_string == layer_type:
            return candidate
        k += 1
        candidate = f"{name} ({k})"
    return candidate


def spatial_kwargs(source_layer) -> dict:
    """scale/translate of ``source_layer`` restricted to its last two (spatial) axes."""
    if source_layer is None:
        return {}
    ndim_sp = 2
    scale = tuple(source_layer.scale)[-ndim_sp:]
    translate = tuple(source_layer.translate)[-ndim_sp:]
    return {"scale": scale, "translate": translate}


def upsert_layer(viewer, ldt: LayerDataTuple) -> Any:
    """Add the layer, or update the result layer of the same name and type in place.

    Layers the user brought (inputs, ground truth) are never touched: when the name is
    taken by one of them the result gets a free name (``name (2)``). Points layers are
    replaced (their per-point sizes and colours do not update in place), keeping their
    position in the layer list.
    """
    data, kwargs, layer_type = ldt
    kwargs = dict(kwargs)
    kwargs["metadata"] = {**(kwargs.get("metadata") or {}), OUTPUT_KEY: True}
    name = kwargs.get("name")
    if name is not None:
        name = kwargs["name"] = free_name(viewer, name, layer_type)
        if name in viewer.layers:
            layer = viewer.layers[name]
            if layer_type != "points":
                _update_in_place(layer, data, kwargs, layer_type)
                return layer
            idx = viewer.layers.index(layer)
            viewer.layers.remove(layer)
            after = {k: kwargs.pop(k) for k in SET_AFTER if k in kwargs}
            new = viewer.add_points(data, **kwargs)
            for key, value in after.items():
                setattr(new, key, value)
            viewer.layers.move(viewer.layers.index(new), idx)
            return new
    after = {k: kwargs.pop(k) for k in SET_AFTER if k in kwargs}
    adder = getattr(viewer, f"add_{layer_type}")
    layer = adder(data, **kwargs)
    for key, value in after.items():
        setattr(layer, key, value)
    return layer


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
    for key in ("scale", "translate", "metadata", "opacity", "colormap", "blending", "contrast_limits", "contour"):
        if key in kwargs:
            try:
                setattr(layer, key, kwargs[key])
            except Exception:
                pass
    return layer
