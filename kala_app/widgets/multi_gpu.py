"""Several GPUs on the Train page (issue 19): a GPU-count field, shown only when this machine has
more than one GPU, and every rank's progress of a multi-process run (gathered by rank 0).

The page hooks these in with a few lines; the run itself is the engine's (``kala train --gpus N``'s
launch job), which starts the processes through PyTorch's launcher with the doctor's plan.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QLabel, QSpinBox


class GpuCountField(QSpinBox):
    """How many GPUs a run uses (1 … the GPUs this machine has). ``probe`` counts them (at
    :meth:`refresh`); the field and its form label stay hidden on a machine with one GPU or none."""

    def __init__(self, probe: Callable[[], int], parent=None) -> None:
        super().__init__(parent)
        self.label = QLabel("GPUs")
        self.setToolTip("Train on several GPUs of this machine at once: the doctor chooses DDP, FSDP "
                        "(sharded) or NF4 + LoRA for the base and the cards, and one process runs per GPU.")
        self.setObjectName("gpuCount")
        self.probe = probe
        self.probed = False
        self.available = 0
        self.setRange(1, 1)
        self.setVisible(False)
        self.label.setVisible(False)

    def refresh(self) -> None:
        """Count the GPUs (the page calls it when first shown: counting loads the GPU runtime)."""
        self.probed = True
        try:
            self.available = int(self.probe())
        except Exception:  # noqa: BLE001 - no count, no field: one device as before
            self.available = 0
        self.setRange(1, max(1, self.available))
        self.setValue(self.available if self.available > 1 else 1)
        shown = self.available > 1
        self.setVisible(shown)
        self.label.setVisible(shown)


class RankProgress(QLabel):
    """One line per rank of a multi-process run (from a metrics line's ``ranks``); hidden otherwise."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("rankProgress")
        self.setVisible(False)

    def show_ranks(self, step: int | None, ranks: list[dict] | None) -> None:
        if not ranks:
            return
        self.setText("\n".join(f"rank {r['rank']}: step {step}, LM loss {r['lm_loss']:.4f}, {r['tokens']} tokens"
                               for r in ranks))
        self.setVisible(True)

    def clear_ranks(self) -> None:
        self.clear()
        self.setVisible(False)
