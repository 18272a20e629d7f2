"""The precision back-off ladder: what a trial whose loss or gradient norm turned non-finite
retries with, and what it records when it cannot retry (it diverged).

A T4 trial loads its base weights in fp16 and trains under fp16 autocast (`model.choose_precision`);
fp16 overflows where fp32 does not. A non-finite training loss, gradient norm or eval_loss
(`hf_trainer.StopOnNonFinite` watches them) stops the attempt at once, before the poisoned
weights are saved, and the trial backs off in place, like the OOM ladder (`lexiray.oom`):

  rung 0  the trial's precision: fp16 (or bf16) base weights under fp16 (bf16) autocast
  rung 1  fp32 base weights under the same autocast (HF fp16=True with the model in fp32)
  rung 2  plain fp32

Everything else is kept, and the next rung resumes from the last (finite) checkpoint: the
LoRA weights and their optimizer state are fp32 on every rung, so a checkpoint fits all of
them. A trial non-finite on a precision it cannot leave (fp32: on CPU, or the last rung; or
any rung of a multi-worker trial, whose ranks cannot retry alone) has diverged: a result,
not an error. It stops there, and its last report says so (`diverged_report`).

`--chaos nan-loss@step=N` makes the training loss non-finite from step N on, on rung 0 only.
On a GPU trial that starts at fp16 it exercises the real rung 0 → rung 1. A trial that starts
at fp32 (on CPU) has no rung to back off to, so under this chaos its ladder gets one virtual
rung above fp32 (the same dtypes, only the injected failure differs): the chaos run then
shows non-finite at step N → one back-off line → the next attempt resumes and finishes.

Pure logic, except `inject_nan_loss` at the end (torch only inside it: `lexiray.trial`
imports this module in every trial's driver process).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from lexiray.results import TrialReport

log = logging.getLogger(__name__)

TRAIN_LOSS, GRAD_NORM, EVAL_LOSS = "loss", "grad_norm", "eval_loss"  # HF's log keys, as watched


def is_finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number at all: nothing to judge


@dataclass(frozen=True)
class NonFinite:
    """What stopped an attempt: which logged value, its value, at which step."""

    what: str  # TRAIN_LOSS, GRAD_NORM or EVAL_LOSS
    value: float
    step: int
    total_steps: int | None = None

    def describe(self) -> str:
        name = {TRAIN_LOSS: "training loss", GRAD_NORM: "gradient norm"}.get(self.what, self.what)
        return f"{name} {self.value} at step {self.step}"


@dataclass(frozen=True)
class PrecisionRung:
    weights: str  # the dtype the base model is loaded in (model.build_peft_model's precision)
    autocast: str  # HF Trainer's mixed precision (fp16 / bf16), fp32 for none
    virtual: bool = False  # --chaos nan-loss's rung above a trial that starts on its last rung

    @property
    def label(self) -> str:
        if self.virtual:
            return f"{self.autocast} (--chaos nan-loss's virtual rung)"
        if self.weights == self.autocast:
            return self.weights
        return f"{self.autocast} autocast, {self.weights} weights"


def precision_rungs(precision: str, virtual_top: bool = False) -> list[PrecisionRung]:
    """The ladder from the trial's precision (model.choose_precision's) down to fp32; with
    `virtual_top`, a chaos rung above a ladder that has nowhere to go (fp32)."""
    rungs = [PrecisionRung(precision, precision)]
    if precision != "fp32":
        rungs += [PrecisionRung("fp32", precision), PrecisionRung("fp32", "fp32")]
    if virtual_top and len(rungs) == 1:
        rungs.insert(0, PrecisionRung(precision, precision, virtual=True))
    return rungs


@dataclass
class PrecisionLadder:
    """One trial's walk down the precision ladder: the rung it trains on now."""

    precision: str  # the trial's own (model.choose_precision)
    chaos_nan_loss: bool = False  # --chaos nan-loss hits this trial: a virtual top rung when needed
    can_back_off: bool = True  # False for multi-worker trials: one rank cannot retry alone
    index: int = 0
    rungs: list[PrecisionRung] = field(init=False)

    def __post_init__(self):
        self.rungs = precision_rungs(self.precision, virtual_top=self.chaos_nan_loss)

    @property
    def rung(self) -> PrecisionRung:
        return self.rungs[self.index]

    @property
    def budget(self) -> int:
        return len(self.rungs) - 1

    @property
    def injects_nan_loss(self) -> bool:
        """--chaos nan-loss strikes on the first rung only."""
        return self.chaos_nan_loss and self.index == 0

    def back_off(self, found: NonFinite) -> PrecisionRung | None:
        """The next rung after `found` (logged on one line), or None: the trial diverged."""
        if not self.can_back_off or self.index >= self.budget:
            return None
        before = self.rung
        self.index += 1
        log.warning("non-finite %s on %s: precision back-off rung %d/%d: %s → %s, resuming from the last "
                    "finite checkpoint", found.describe(), before.label, self.index, self.budget, before.label,
                    self.rung.label)
        return self.rung

    def report(self) -> TrialReport:
        """What each report carries: the rungs taken, the precision it runs at now."""
        return TrialReport(precision=self.rung.autocast, precision_retries=self.index, ran_precision=self.rung.label)

    def explain_divergence(self, found: NonFinite) -> str:
        """The one line a diverged trial logs and records."""
        after = f" after {self.index} precision back-off rung{'s' if self.index != 1 else ''}" if self.index else ""
        return f"diverged: non-finite {found.describe()} on {self.rung.label}{after}"


def diverged_report(ladder: PrecisionLadder, found: NonFinite, metric: str) -> TrialReport:
    """A diverged trial's last report: the reason, the step it stopped at, and the tuned
    metric as NaN. NaN, not ±inf: ASHA (Ray 2.60's AsyncHyperBandScheduler) ranks a rung by
    np.nanpercentile, which skips NaN, while a -inf in a rung can turn its cutoff into -inf
    or NaN and stop nobody there; and Tune refuses a result without the metric."""
    return (ladder.report()
            .merged(TrialReport(step=found.step, total_steps=found.total_steps,
                                diverged=ladder.explain_divergence(found)))
            .with_value(metric, float("nan")))


# --------------------------------------------------------------------------- torch helper


def inject_nan_loss(model, from_step: int, current_step, active) -> object:
    """`--chaos nan-loss@step=N`: from training step N on (`current_step()`, 1-based, the
    step being trained) and while `active()`, the model's training loss is multiplied by
    NaN, so its gradients and the weights an optimizer step updates are poisoned too, as
    after a real overflow. Returns the hook's handle."""

    def hook(module, args, output):
        loss = getattr(output, "loss", None)
        if module.training and loss is not None and active() and current_step() >= from_step:
            output.loss = loss * float("nan")
        return output

    return model.register_forward_hook(hook)
