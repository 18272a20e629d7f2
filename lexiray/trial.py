"""One trial on a Ray Train worker: HF Trainer around a PEFT model, reporting to Ray Train.

`train_loop_per_worker` is what every Ray Train worker runs. It knows nothing of Tune:
Train forwards its reports to Tune through `TuneReportCallback` when a Tune trial drives
it, and resumes it from `ray.train.get_checkpoint()` after a worker failure.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from lexiray.config import ExperimentConfig
from lexiray.data import PadCollator, load_prepared
from lexiray.model import build_peft_model, choose_precision, detect_hardware, load_tokenizer

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint"  # RayTrainReportCallback's folder inside a Ray checkpoint


def peak_memory_mb() -> float:
    """Peak GPU memory of this process when on CUDA, else its peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


SCRATCH_PREFIX = "lexiray-trial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_scratch_dirs(parent: str | None = None) -> None:
    """Remove the scratch folders of trial workers that no longer exist (on this machine).

    ASHA stops a trial by killing its worker, so no `finally` of that worker runs, and each
    leftover holds its last checkpoints (tens of MB on a real model)."""
    for entry in Path(parent or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = entry.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def make_scratch_dir(parent: str | None = None) -> str:
    """The HF Trainer's local output folder for this worker (Ray persists the checkpoints),
    named after the worker's pid so that `sweep_scratch_dirs` can tell when it is orphaned."""
    parent = parent or tempfile.gettempdir()
    sweep_scratch_dirs(parent)
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent)


def _callbacks():
    """Built lazily: importing transformers / ray.train at module import would slow every
    process that merely imports lexiray.trial (the Tune driver, the CLI)."""
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from transformers import TrainerCallback

    class ThroughputCallback(TrainerCallback):
        """Measures training time (not evaluation), samples/s and non-pad tokens/s."""

        def __init__(self, started_at: float | None):
            self.started_at = started_at
            self.train_seconds = 0.0
            self.step_began = None
            self.first_step_at = None
            self.first_step_perf = self.last_step_end = 0.0
            self.start_step = 0
            self.start_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step
            self.start_tokens = state.num_input_tokens_seen

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_began = time.perf_counter()
            if self.first_step_at is None:
                self.first_step_at = time.time()
                self.first_step_perf = self.step_began

        def on_step_end(self, args, state, control, **kwargs):
            if self.step_began is not None:
                self.last_step_end = time.perf_counter()
                self.train_seconds += self.last_step_end - self.step_began
                self.step_began = None

        def metrics(self, args, state) -> dict:
            steps = state.global_step - self.start_step
            samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            seconds = max(self.train_seconds, 1e-9)
            tokens = state.num_input_tokens_seen - self.start_tokens
            metrics = {
                "samples_per_second": samples / seconds,
                "tokens_per_second": tokens / seconds,
                "steps_per_second": steps / seconds,
                "peak_memory_mb": peak_memory_mb(),
                "total_steps": state.max_steps,
                "resumed_from_step": self.start_step,  # > 0 after a restore: steps kept
            }
            if steps > 1 and self.first_step_at is not None:
                # steps over the whole training phase, evaluations and checkpoints included
                metrics["phase_steps_per_second"] = steps / (self.last_step_end - self.first_step_perf)
            if self.started_at is not None and self.first_step_at is not None:
                metrics["startup_s"] = self.first_step_at - self.started_at
            return metrics

    class FinalEvaluationCallback(TrainerCallback):
        """Evaluate and save on the last step, so the final model is reported and kept."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_evaluate = True
                control.should_save = True
            return control

    class LexirayReportCallback(RayTrainReportCallback):
        """Ray's report-on-save callback, plus throughput, memory and the train loss."""

        def __init__(self, throughput: ThroughputCallback):
            super().__init__()
            self.throughput = throughput

        def on_save(self, args, state, control, **kwargs):
            extra = self.throughput.metrics(args, state)
            losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            if losses:
                extra["train_loss"] = losses[-1]
            extra["step"] = state.global_step
            # The parent merges state.log_history into the report: append ours last.
            state.log_history.append(extra)
            try:
                super().on_save(args, state, control, **kwargs)
            finally:
                state.log_history.pop()

    class ProgressCallback(TrainerCallback):
        """One line per log for `lexiray train` (Tune shows its own status lines)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "learning_rate"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            if len(parts) > 1:
                print("  " + "  ".join(parts), flush=True)

    return ThroughputCallback, FinalEvaluationCallback, LexirayReportCallback, ProgressCallback


def build_training_arguments(config: ExperimentConfig, output_dir: str, precision: str, cuda: bool,
                             eval_on_start: bool):
    from transformers import TrainingArguments

    training = config.training
    workers = training.dataloader_num_workers
    if workers == "auto":  # loader processes pay off feeding a GPU; on CPU they steal its cores
        workers = int(config.resources.cpus_per_trial) if cuda else 0
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=training.learning_rate,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        optim=training.optim,
        lr_scheduler_type=training.lr_scheduler_type,
        warmup_steps=training.warmup_steps,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        eval_strategy="steps",
        eval_steps=training.effective_eval_steps,
        eval_on_start=eval_on_start,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=2,  # local copies only: Ray keeps the persisted ones
        logging_steps=training.logging_steps,
        activation_checkpointing=training.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False},
        # Every LoRA weight takes part in each forward pass; HF's default (True when not
        # checkpointing) costs an extra autograd traversal per step under Ray's DDP wrapper.
        ddp_find_unused_parameters=False,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not cuda,
        dataloader_num_workers=workers,
        dataloader_prefetch_factor=training.dataloader_prefetch_factor if workers > 0 else None,
        include_num_input_tokens_seen="non_padding",
        report_to=[],  # TensorBoard is added explicitly, writing into the experiment folder
        disable_tqdm=True,
        seed=training.seed,
        data_seed=training.seed,
        remove_unused_columns=False,
    )


def tensorboard_callback(folder: str):
    """HF's TensorBoard callback with its writer pinned to `folder` (inside the experiment
    folder, so `tensorboard --logdir` on the experiment shows every trial's curves)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=folder))


def set_thread_count(cpus: float) -> None:
    """Ray starts workers with OMP_NUM_THREADS=1; give torch the CPUs the trial holds."""
    import torch

    threads = max(1, round(cpus))  # 0.99 CPU (a trial driver's sliver given back) is 1 thread
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _datasets(loop_config: dict):
    """The tokenized sets: from the object store (tuning) or the run folder (`train`)."""
    refs = loop_config.get("data_refs")
    if not refs:
        return load_prepared(loop_config["data_dir"])
    import datasets
    import ray

    return datasets.Dataset(ray.get(refs["train"])), datasets.Dataset(ray.get(refs["eval"]))


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker entry point. `loop_config` is plain data built by the driver:
    experiment (the resolved config), data_dir, tensorboard_dir, eval_on_start, started_at."""
    import ray.train
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per report
    config = ExperimentConfig.model_validate(loop_config["experiment"])
    hardware = detect_hardware()
    if not hardware.cuda:
        set_thread_count(config.resources.cpus_per_trial)
    precision = choose_precision(config.training.precision, hardware)

    tensorboard_dir = loop_config.get("tensorboard_dir")
    tokenizer = load_tokenizer(config.model)
    model = build_peft_model(config.model, config.lora, config.training, precision)
    train_set, eval_set = _datasets(loop_config)
    train_set = train_set.select_columns(["input_ids", "labels"])
    eval_set = eval_set.select_columns(["input_ids", "labels"])

    checkpoint = ray.train.get_checkpoint()
    output_dir = make_scratch_dir()
    args = build_training_arguments(
        config, output_dir, precision, hardware.cuda,
        # a resumed run has its step-0 evaluation in the restored history already
        eval_on_start=bool(loop_config.get("eval_on_start")) and checkpoint is None,
    )
    throughput_cls, final_eval_cls, report_cls, progress_cls = _callbacks()
    throughput = throughput_cls(loop_config.get("started_at"))
    callbacks = [throughput, final_eval_cls()]
    chaos = loop_config.get("chaos")
    if chaos:  # before the report callback, so kill-save strikes before Ray persists
        from lexiray.chaos import chaos_callback

        callbacks.append(chaos_callback(chaos))
    callbacks.append(report_cls(throughput))
    if loop_config.get("print_progress"):
        callbacks.append(progress_cls())
    if tensorboard_dir and ray.train.get_context().get_world_rank() == 0:
        callbacks.append(tensorboard_callback(tensorboard_dir))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts: ProgressCallback prints a clean line
    trainer = prepare_trainer(trainer)

    try:
        if checkpoint is None:
            trainer.train()
            return
        with checkpoint.as_directory() as restored:
            resume_dir = os.path.join(restored, CHECKPOINT_NAME)
            log.info("resuming from %s", resume_dir)
            trainer.train(resume_from_checkpoint=resume_dir)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)  # every checkpoint is in Ray's storage


def read_log_history(checkpoint_dir: str | Path) -> list[dict]:
    """The HF log history saved with a checkpoint (includes the step-0 evaluation)."""
    state = Path(checkpoint_dir) / "trainer_state.json"
    if not state.is_file():
        return []
    return json.loads(state.read_text()).get("log_history", [])
