"""Render packaging/icons/kala-studio.svg to the PNG sizes the installers use.

Run from the repository root: ``QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/icons/render_png.py``.
The PNGs are committed, so a build does not need to run this.
"""

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

HERE = Path(__file__).resolve().parent
SIZES = (256, 48)


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv)  # noqa: F841 (needed by QImage text/AA)
    renderer = QSvgRenderer(str(HERE / "kala-studio.svg"))
    if not renderer.isValid():
        raise SystemExit("kala-studio.svg is not a valid SVG")
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        name = "kala-studio.png" if size == 256 else f"kala-studio-{size}.png"
        if not image.save(str(HERE / name)):
            raise SystemExit(f"could not write {name}")
        print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
