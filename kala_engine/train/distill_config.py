"""The settings of a distillation (:mod:`kala_engine.train.distill`); no torch here, so that
`kala --help` and the app read the defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillConfig:
    """The distillation's own settings (the rest of the run is its TrainConfig; both go to run.json)."""

    teacher: str  # a KALA model folder (RUN/final)
    temperature: float = 2.0  # softens both distributions; the KL is scaled by T^2 (Hinton et al. 2015)
    kd_weight: float = 1.0  # the KL to the teacher's next-token distribution
    score_weight: float = 1.0  # MSE to the teacher's final law scores
    layer_weight: float = 0.0  # MSE of the student's monitors to the teacher's mapped layers (0: off)
    label_weight: float = 1.0  # the data's own labels (LM + ethics loss)

    def __post_init__(self):
        if not self.teacher:
            raise ValueError("DistillConfig.teacher must be a KALA model folder")
        if not 0.5 <= self.temperature <= 20:
            raise ValueError(f"DistillConfig.temperature must be in [0.5, 20], got {self.temperature}")
        for name in ("kd_weight", "score_weight", "layer_weight", "label_weight"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"DistillConfig.{name} must be in [0, 100], got {getattr(self, name)}")
