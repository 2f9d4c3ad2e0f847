"""Packaging: the manifest validates, napari/npe2 list our contributions, the wheel
installs like a napari-hub install, and core modules stay free of Qt and napari."""

import json
import os
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_sickle"
FORBIDDEN = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "vispy", "magicgui")


def _run(args, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=kw.pop("timeout", 120), **kw)


def test_npe2_validate_passes():
    npe2_cli = Path(sys.executable).parent / "npe2"
    res = _run([str(npe2_cli), "validate", "napari-sickle"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr)


def test_npe2_lists_reader_writers_and_sample():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-sickle")
    cmds = {c.id for c in mf.contributions.commands}
    for ext in ("smear.png", "a.JPG", "x.tif", "c.bmp", "boxes.xml", "regions.csv", "points.txt"):
        readers = [r.command for r in pm.iter_compatible_readers([ext])]
        assert "napari-sickle.get_reader" in readers, ext
    writers_shapes = [w.command for w in pm.iter_compatible_writers(["shapes"])]
    writers_labels = [w.command for w in pm.iter_compatible_writers(["labels"])]
    assert "napari-sickle.write_regions_csv" in writers_shapes
    assert "napari-sickle.write_labels" in writers_labels
    samples = {(plugin, s.key) for plugin, contribs in pm.iter_sample_data() for s in contribs}
    assert ("napari-sickle", "smear") in samples
    assert {"napari-sickle.get_reader", "napari-sickle.write_labels", "napari-sickle.write_regions_csv"} <= cmds
    # the reader and writer commands resolve to real callables
    from npe2.manifest.utils import import_python_name

    for cid in ("napari-sickle.get_reader", "napari-sickle.write_labels", "napari-sickle.write_regions_csv"):
        assert callable(import_python_name(pm.get_command(cid).python_name)), cid


def _core_modules() -> list[str]:
    mods = ["napari_sickle"]
    for pkg in ("io", "data", "models", "analysis", "training", "plugin"):
        for f in sorted((SRC / pkg).rglob("*.py")):
            rel = f.relative_to(SRC.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts[-1] == "__main__":
                continue
            mods.append(".".join(parts))
    mods.append("napari_sickle.layers.annotations")
    return mods


def test_core_modules_do_not_import_qt_or_napari():
    mods = _core_modules()
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        forbidden = {FORBIDDEN!r}
        report = {{}}
        import napari_sickle
        heavy_at_package_import = [m for m in ("torch", "napari", "qtpy") if m in sys.modules]
        for mod in {mods!r}:
            before = set(sys.modules)
            importlib.import_module(mod)
            new = [m for m in set(sys.modules) - before if m.split(".")[0] in forbidden]
            if new:
                report[mod] = sorted(new)[:5]
        print(json.dumps({{"report": report, "heavy": heavy_at_package_import}}))
        """
    )
    res = _run([sys.executable, "-c", code], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], f"import napari_sickle pulls in {out['heavy']}"
    assert out["report"] == {}, f"core modules import Qt/napari: {out['report']}"


@pytest.mark.slow
def test_wheel_contains_manifest_and_installs_for_npe2(tmp_path):
    # build from a copy so the checkout gets no build/ or egg-info churn
    import shutil

    srcdir = tmp_path / "srccopy"
    shutil.copytree(ROOT / "src", srcdir / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, srcdir / name)
    dist = tmp_path / "dist"
    # --no-isolation + -x: offline, with the setuptools of this venv (it needs no 'wheel')
    res = _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-x", "--outdir", str(dist), str(srcdir)],
        timeout=90,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    [wheel] = list(dist.glob("napari_sickle-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_sickle/napari.yaml" in names
        assert "napari_sickle/plugin/_reader.py" in names
        ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        eps = zf.read(ep).decode()
        # every shipped model file travels in the wheel, all of them under 60 MB together
        manifest = json.loads(zf.read("napari_sickle/weights/manifest.json"))
        shipped = [f"napari_sickle/weights/{f['file']}" for m in manifest["models"] for f in m["files"].values()]
        assert shipped and set(shipped) <= set(names)
        assert sum(zf.getinfo(n).file_size for n in names if n.startswith("napari_sickle/weights/")) < 60e6
    assert "[napari.manifest]" in eps and "napari-sickle = napari_sickle:napari.yaml" in eps

    # A fresh venv as a user has it: napari & co. available, napari-sickle installed
    # from the wheel only. The dev venv's packages are offered through a .pth to a
    # folder of links that leaves out the editable napari-sickle install.
    venv = tmp_path / "venv"
    res = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    assert res.returncode == 0, res.stderr
    vpy = venv / "bin" / "python"
    shadow = tmp_path / "deps"
    shadow.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            n = entry.name.lower()
            if n.startswith(("napari_sickle", "__editable__")) and "sickle" in n:
                continue
            if entry.suffix == ".pth" or (shadow / entry.name).exists():
                continue
            (shadow / entry.name).symlink_to(entry)
    res = _run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    purelib = Path(res.stdout.strip())
    res = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(vpy),
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            str(wheel),
        ],
        timeout=90,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (purelib / "zz_dev_deps.pth").write_text(str(shadow) + "\n")

    check = textwrap.dedent(
        """
        import json, warnings
        warnings.simplefilter("ignore")
        import napari_sickle
        from importlib.metadata import distributions
        from npe2 import PluginManager
        pm = PluginManager()
        pm.discover()
        mf = pm.get_manifest("napari-sickle")
        dists = [d for d in distributions() if (d.metadata["Name"] or "").lower() == "napari-sickle"]
        print(json.dumps({
            "module": napari_sickle.__file__,
            "n_dists": len(dists),
            "readers": [r.command for r in mf.contributions.readers],
            "writers": [w.command for w in mf.contributions.writers],
            "samples": [s.key for s in mf.contributions.sample_data],
            "reader_ok": callable(__import__("napari_sickle.plugin._reader", fromlist=["x"]).napari_get_reader),
        }))
        """
    )
    res = _run([str(vpy), "-c", check], cwd=str(tmp_path), timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["module"].startswith(str(purelib)), out["module"]
    assert out["n_dists"] == 1
    assert out["readers"] == ["napari-sickle.get_reader"]
    assert set(out["writers"]) == {"napari-sickle.write_regions_csv", "napari-sickle.write_labels"}
    assert out["samples"] == ["smear"] and out["reader_ok"]
