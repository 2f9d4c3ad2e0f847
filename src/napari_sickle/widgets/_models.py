"""Model choice for the analysis widgets: a dropdown of the shipped models of one task (read
from the model zoo each time it opens, so newly shipped models appear) plus
'custom checkpoint…', and one line saying in plain words what the chosen model was trained on.
"""

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label

from ._display import wrap

CUSTOM = "custom checkpoint…"
TASK_WORDS = {"rbc": "red-cell", "wbc": "white-cell", "unet": "U-Net segmentation"}


def path_or_none(value):
    """A FileEdit value as a path string, or None when empty or a folder."""
    s = str(value or "").strip()
    if not s or s == "." or Path(s).is_dir():
        return None
    return s


class ModelPicker(Container):
    """Dropdown ``model`` + the chosen model's description + checkpoint file(s) for 'custom'.

    ``roles`` maps a checkpoint role (``detector``, ``classifier``, ``unet``) to its label.
    In custom mode a role left empty takes the file of the task's shipped default, when there
    is one.
    """

    def __init__(self, task: str, roles: dict, label: str = "model", custom_hint: str = ""):
        self.task = task
        self.custom_hint = custom_hint
        self.choice = ComboBox(
            label=label,
            choices=self._choices,
            tooltip="A model shipped with napari-sickle, or your own checkpoint file.",
        )
        self.about = wrap(Label(value="", label=" "))
        self.files = {role: FileEdit(mode="r", filter="*.pt", label=text, value="") for role, text in roles.items()}
        super().__init__(widgets=[self.choice, self.about, *self.files.values()], labels=True)
        self.margins = (0, 0, 0, 0)
        self.choice.changed.connect(self._update)
        for f in self.files.values():
            f.changed.connect(self._update)
        self._update()

    # -- choices -------------------------------------------------------------------
    def shipped(self) -> list:
        from ..models import zoo

        try:
            return zoo.models(self.task)
        except Exception:  # a broken manifest must not break the widget
            return []

    def _choices(self, *_):
        return [m.name for m in self.shipped()] + [CUSTOM]

    def refresh(self):
        """Re-read the shipped models (e.g. after one was installed)."""
        self.choice.reset_choices()
        self._update()

    # -- state ---------------------------------------------------------------------
    @property
    def is_custom(self) -> bool:
        return self.choice.value == CUSTOM

    def model_name(self):
        """The chosen shipped model's name, or None in custom mode."""
        return None if self.is_custom else self.choice.value

    def shipped_model(self):
        name = self.model_name()
        return next((m for m in self.shipped() if m.name == name), None)

    def file(self, role: str):
        return path_or_none(self.files[role].value) if self.is_custom else None

    def problem(self) -> str:
        """Why the current choice cannot run ('' when it can)."""
        if not self.is_custom:
            return ""
        has_default = bool(self.shipped())
        missing = [str(w.label) for r, w in self.files.items() if self.file(r) is None]
        if missing and not (has_default and len(missing) < len(self.files)):
            what = (
                "a checkpoint file (.pt)" if len(self.files) == 1 else f"checkpoint files (.pt): {', '.join(missing)}"
            )
            if not has_default:
                return (
                    f"No {TASK_WORDS.get(self.task, self.task)} model is shipped with this installation: choose {what}."
                )
            return f"Choose {what}."
        bad = [self.file(r) for r in self.files if self.file(r) and not Path(self.file(r)).is_file()]
        if bad:
            return f"Checkpoint file not found: {bad[0]}"
        return ""

    def describe(self) -> str:
        """What the chosen model is, in plain words."""
        if self.is_custom:
            text = "Your own checkpoint"
            if len(self.files) > 1 and self.shipped():
                text += f" (a file left empty uses {self.shipped()[0].name})"
            text += "."
            if not self.shipped():
                text = (
                    f"No {TASK_WORDS.get(self.task, self.task)} model is shipped with this installation: "
                    "choose a checkpoint file (Train models makes one)."
                )
            return f"{text} {self.custom_hint}".strip()
        m = self.shipped_model()
        return f"{m.name}: {m.description}" if m is not None else ""

    def _update(self, *_):
        for f in self.files.values():
            f.visible = self.is_custom
        self.about.value = self.describe()

    def set_checkpoint(self, role: str, path) -> None:
        """Switch to 'custom checkpoint…' and set the file for ``role``."""
        self.choice.value = CUSTOM
        self.files[role].value = str(path)
        self._update()

    def key(self) -> tuple:
        return (self.model_name(), *(self.file(r) for r in self.files))
