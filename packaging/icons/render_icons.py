"""Render packaging/icons/kala-studio.svg to the raster icons the installers use.

* ``kala-studio.png`` (256 px) and ``kala-studio-48.png``: Linux hicolor theme, desktop entry
* ``kala-studio.ico`` (256 px): the Windows executables and the Inno Setup installer
* ``kala-studio.icns`` (512 px): the macOS ``.app``

Run from the repository root:
``QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/icons/render_icons.py``. The results
are committed, so a build does not need to run this (nor Pillow to convert icons).
"""

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

HERE = Path(__file__).resolve().parent
OUTPUTS = (("kala-studio.png", 256), ("kala-studio-48.png", 48), ("kala-studio.ico", 256), ("kala-studio.icns", 512))


def render(renderer: QSvgRenderer, size: int) -> QImage:
    """The SVG drawn into a transparent size x size image."""
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv)  # noqa: F841 (Qt image plugins need it)
    renderer = QSvgRenderer(str(HERE / "kala-studio.svg"))
    if not renderer.isValid():
        raise SystemExit("kala-studio.svg is not a valid SVG")
    for name, size in OUTPUTS:
        if not render(renderer, size).save(str(HERE / name)):
            raise SystemExit(f"could not write {name} (is the Qt image format plugin for it installed?)")
        print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
