"""Names and fixed values shared by every part of the plugin (no imports beyond the standard library)."""

from __future__ import annotations

#: The six RBC types of Qiu et al., in the paper's order. Column names in CSVs.
RBC_TYPES: tuple[str, ...] = (
    "oval_disc",
    "elongated_sickle",
    "reticulocyte",
    "granular",
    "echinocyte",
    "stomatocyte",
)
RBC_TYPE_LABELS: dict[str, str] = {
    "oval_disc": "Oval/Disc",
    "elongated_sickle": "Elongated/Sickle",
    "reticulocyte": "Reticulocyte",
    "granular": "Granular",
    "echinocyte": "Echinocyte",
    "stomatocyte": "Stomatocyte",
}
#: Every type except Oval/Disc counts as abnormal.
ABNORMAL_TYPES: tuple[str, ...] = RBC_TYPES[1:]

#: Xu et al. 2017 sickle-RBC class folders -> the paper's six types.
XU_FOLDER_TO_TYPE: dict[str, str] = {
    "Discocytes": "oval_disc",
    "Oval": "oval_disc",
    "Elongated": "elongated_sickle",
    "Sickle-ISC": "elongated_sickle",
    "Reticulocytes": "reticulocyte",
    "Granular": "granular",
    "Echinocytes": "echinocyte",
    "Stomatocyte": "stomatocyte",
}

#: Matek et al. 2021 bone-marrow classes (code, full name), in the paper's order.
MATEK_CLASSES: tuple[tuple[str, str], ...] = (
    ("NGB", "Band neutrophil"),
    ("NGS", "Segmented neutrophil"),
    ("LYT", "Lymphocyte"),
    ("MON", "Monocyte"),
    ("EOS", "Eosinophil"),
    ("BAS", "Basophil"),
    ("MMZ", "Metamyelocyte"),
    ("MYB", "Myelocyte"),
    ("PMO", "Promyelocyte"),
    ("BLA", "Blast"),
    ("PLM", "Plasma cell"),
    ("KSC", "Smudge cell"),
    ("OTH", "Other cell"),
    ("ART", "Artefact"),
    ("NIF", "Not identifiable"),
    ("PEB", "Proerythroblast"),
    ("EBO", "Erythroblast"),
    ("HAC", "Hairy cell"),
    ("ABE", "Abnormal eosinophil"),
    ("LYI", "Immature lymphocyte"),
    ("FGC", "Faggot cell"),
)
MATEK_CODES: tuple[str, ...] = tuple(c for c, _ in MATEK_CLASSES)

#: Glüge et al. 2024 per-dataset channel normalisation for Matek images.
MATEK_MEAN = (0.5630, 0.4959, 0.7353)
MATEK_STD = (0.2421, 0.2835, 0.1767)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Device choices of every CLI and widget (resolved by :func:`napari_sickle._device.resolve_device`).
DEVICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")

#: File extensions read as images (:func:`napari_sickle.io.images.read_image` reads them by content).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Box columns of every region table: pixel coordinates, x = column, maxima exclusive.
BOX_COLUMNS: tuple[str, ...] = ("x_min", "y_min", "x_max", "y_max")
