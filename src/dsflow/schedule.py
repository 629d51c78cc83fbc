"""DeepSpeech 0.9.3's early stopping and reduce-learning-rate-on-plateau arithmetic (train.py `train()`,
steps 3-6 after each validation), as a pure state machine.

After each epoch's dev loss:
  3. dev_loss > best - es_min_delta  -> epochs_without_improvement += 1, else it is reset to 0
  4. dev_loss < best (strictly, no delta) -> save best_dev (best = dev_loss)
  5. early_stop and epochs_without_improvement == es_epochs -> stop (before 6)
  6. reduce_lr_on_plateau and counter > 0 and counter % plateau_epochs == 0 -> reload best_dev (weights,
     Adam state, learning rate), multiply the learning rate by plateau_reduction, save best_dev again.

The comparisons are DeepSpeech's Python float comparisons, so a NaN dev loss resets the counter and saves
nothing, and an infinite one neither counts as worse than an infinite best nor saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    save_best: bool  # step 4: save best_dev
    stop: bool  # step 5: early stop (no plateau handling after it)
    reduce_lr: bool  # step 6: reload best_dev, lr *= plateau_reduction, save best_dev again


@dataclass
class Schedule:
    early_stop: bool = False
    es_epochs: int = 25
    es_min_delta: float = 0.05
    reduce_lr_on_plateau: bool = False
    plateau_epochs: int = 10
    plateau_reduction: float = 0.1
    best_dev_loss: float = math.inf
    epochs_without_improvement: int = 0

    def __post_init__(self):
        if self.reduce_lr_on_plateau and self.plateau_epochs < 1:
            # DeepSpeech would die with ZeroDivisionError at the first epoch without improvement.
            raise ValueError(f"plateau_epochs must be at least 1 with reduce_lr_on_plateau, got {self.plateau_epochs}")

    def update(self, dev_loss: float) -> Decision:
        if dev_loss > self.best_dev_loss - self.es_min_delta:
            self.epochs_without_improvement += 1
        else:
            self.epochs_without_improvement = 0
        save_best = dev_loss < self.best_dev_loss
        if save_best:
            self.best_dev_loss = dev_loss
        n = self.epochs_without_improvement
        if self.early_stop and n == self.es_epochs:
            return Decision(save_best, stop=True, reduce_lr=False)
        reduce_lr = self.reduce_lr_on_plateau and n > 0 and n % self.plateau_epochs == 0
        return Decision(save_best, stop=False, reduce_lr=reduce_lr)
