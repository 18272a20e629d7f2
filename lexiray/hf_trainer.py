"""The Hugging Face side of a trial: `TrainingArguments`, the `Trainer`, and its callbacks.

`build_hf_trainer` is the one place a HF `Trainer` is assembled: the Ray Train worker
(`lexiray.trial`), the benchmarks and the tests all use it, so they train the same thing.

This module imports transformers at the top, which costs ~3 CPU-seconds; `lexiray.trial`
imports it only inside the worker function, never in the per-trial driver process.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from transformers import AttentionInterface, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lexiray.chaos import ChaosSpec, fire_once
from lexiray.config import ExperimentConfig
from lexiray.cost import usd
from lexiray.data import PadCollator, PaddingFreeCollator
from lexiray.errors import ConfigError
from lexiray.memory import EVAL_LOSS_CHUNK_TOKENS, mfu
from lexiray.precision import EVAL_LOSS, GRAD_NORM, TRAIN_LOSS, NonFinite, is_finite
from lexiray.results import CURVE_KEYS, TrialReport
from lexiray.storage import CHECKPOINT_NAME, is_uri, upload_folder

MODEL_COLUMNS = ["input_ids", "labels"]
# lexiray's sdpa for padding-free rows (`packed_sdpa_attention`), registered with transformers.
PACKED_SDPA = "lexiray_packed_sdpa"
# Attention implementations that read restarting position_ids as sequence boundaries, so a
# padding-free row's samples never attend to each other (transformers 5: masking_utils builds a
# block-diagonal mask for sdpa / eager / flex; flash attention, batch 1, runs its varlen kernel).
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3",
                    "flash_attention_4", PACKED_SDPA)
TASK_COLUMN = "task"  # the prepared datasets' task name per row ("" when the data has none)
# Causal LMs whose logits are their lm_head over the decoder's last hidden state, nothing more
# (no logit scaling or soft-capping): their evaluation loss is computed in chunks of answer
# positions (`answer_token_losses`); any other model is evaluated through its own forward.
PLAIN_LM_HEAD_TYPES = ("qwen2", "qwen3", "llama", "mistral")


def training_arguments(config: ExperimentConfig, output_dir: str, precision: str, cuda: bool,
                       eval_on_start: bool = False) -> TrainingArguments:
    """The config's training section as HF `TrainingArguments` (HF's names are kept)."""
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
        # HF's default replaces a non-finite step's loss by the average so far: the logged loss
        # (what StopOnNonFinite reads in multi-worker trials, and TensorBoard draws) must show it.
        logging_nan_inf_filter=False,
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
        # HF counts non-pad tokens from the attention mask; a padding-free row has no mask
        # and no padding, so all its tokens count.
        include_num_input_tokens_seen="all" if config.data.packing == "padding_free" else "non_padding",
        train_sampling_strategy="group_by_length" if config.data.packing == "group_by_length" else "random",
        report_to=[],  # TensorBoard is added explicitly, writing into the experiment folder
        disable_tqdm=True,
        seed=training.seed,
        data_seed=training.seed,
        remove_unused_columns=False,
    )


def build_hf_trainer(config: ExperimentConfig, model, tokenizer, train_set, eval_set, output_dir: str,
                     precision: str, cuda: bool, eval_on_start: bool = False,
                     callbacks: list[TrainerCallback] | tuple = (), model_init=None) -> Trainer:
    """A HF `Trainer` for the config: training batches laid out as `data.packing` says
    (evaluation batches are always padded), the given callbacks, and no raw log-dict
    printing (`PrintTrainingProgress` prints a clean line).
    Pass `model=None, model_init=...` for HF's own `hyperparameter_search` (benchmarks)."""
    packing = config.data.packing
    if packing == "padding_free" and model is not None:
        prepare_for_padding_free(model)
    if packing == "padding_free" and model_init is not None:
        model_init = _then(model_init, prepare_for_padding_free)
    # group_by_length: HF's length-grouped sampler reads the precomputed "length" column.
    columns = MODEL_COLUMNS + ["length"] if packing == "group_by_length" else MODEL_COLUMNS
    # With task names in the eval set, each evaluation also reports eval_loss/<task>.
    tasks = eval_task_names(eval_set)
    eval_columns = [*columns, TASK_COLUMN] if tasks else columns
    trainer = PerTaskEvalTrainer(
        model=model,
        model_init=model_init,
        args=training_arguments(config, output_dir, precision, cuda, eval_on_start),
        train_dataset=train_set.select_columns(columns),
        eval_dataset=eval_set.select_columns(eval_columns),
        data_collator=PadCollator(tokenizer.pad_token_id),
        eval_collator=TaskTaggingCollator(PadCollator(tokenizer.pad_token_id), tasks) if tasks else None,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.step_loss_watch = next((callback.note_step_loss for callback in callbacks
                                    if isinstance(callback, StopOnNonFinite) and callback.each_step), None)
    if packing == "padding_free":
        trainer.get_train_dataloader = _with_collator(trainer, trainer.get_train_dataloader, PaddingFreeCollator())
    return trainer


def _with_collator(trainer: Trainer, make_dataloader: Callable, collator: Callable) -> Callable:
    """`make_dataloader` building its loader with `collator` instead of the trainer's own
    (HF has one collator for training and evaluation; the loader keeps the one it was built with)."""

    def make() -> object:
        kept, trainer.data_collator = trainer.data_collator, collator
        try:
            return make_dataloader()
        finally:
            trainer.data_collator = kept

    return make


def _then(model_init: Callable, prepare: Callable) -> Callable:
    """`model_init` followed by `prepare`; its signature stays model_init's (HF passes the
    trial only to a model_init that takes one)."""

    @functools.wraps(model_init)
    def init(*trial):
        return prepare(model_init(*trial))

    return init


def prepare_for_padding_free(model):
    """The model, ready to train padding-free rows: its attention checked (refused when it
    would let a row's samples see each other), no KV cache, lexiray's packed sdpa for sdpa."""
    implementation = model.config._attn_implementation
    if implementation not in PACKED_ATTENTION:
        raise ConfigError(
            f"data.packing=padding_free needs an attention implementation that honours packed "
            f"position_ids ({', '.join(PACKED_ATTENTION)}); this model uses {implementation!r}: "
            "load it with one of those or use data.packing=none or group_by_length"
        )
    # With a KV cache transformers skips the packed-sequence mask (masking_utils), and a row's
    # samples would attend to each other; training never uses the cache.
    model.config.use_cache = False
    if implementation == "sdpa":
        use_packed_sdpa(model)
    return model


def use_packed_sdpa(model) -> None:
    """Switch an sdpa model to `packed_sdpa_attention` (same results, Σ L² attention scores)."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)  # the masks sdpa gets, padded or packed
    model.set_attn_implementation(PACKED_SDPA)


def packed_sdpa_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """transformers' sdpa run on each sample of a padding-free row on its own.

    For a packed row transformers builds a block-diagonal causal mask, and plain sdpa computes
    all (Σ L)² scores of the row, most of them masked: on CPU, and on GPUs without flash
    attention (a T4), that ate most of what dropping the padding saved. Each sample's diagonal
    block of the mask, with its queries, keys and values, is exactly what that sample attends
    to, so sdpa over each block alone gives the same result with Σ L² scores. Anything else
    (a padded batch, one sequence, a KV cache) is plain sdpa."""
    packed_row = (attention_mask is not None and position_ids is not None and query.shape[0] == 1
                  and attention_mask.dim() == 4 and query.shape[2] == key.shape[2])
    if not packed_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, position_ids=position_ids, **kwargs)
    positions = position_ids[0]
    # the rule of transformers' find_packed_sequence_indices: a sample starts where positions skip
    starts = [0] + ((positions[1:] != positions[:-1] + 1).nonzero().flatten() + 1).tolist() + [query.shape[2]]
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      attention_mask[..., start:end, start:end], **kwargs)[0]
               for start, end in zip(starts[:-1], starts[1:])]
    return torch.cat(outputs, dim=1), None  # sdpa_attention_forward returns (batch, sequence, heads, dim)

# --------------------------------------------------------------------------- per-task eval loss


def eval_task_names(eval_set) -> list[str]:
    """The eval set's task names, sorted, when its rows name a task (LexiLingo's five);
    none when the data has no task column or every row's task is empty."""
    if TASK_COLUMN not in eval_set.column_names:
        return []
    names = sorted(set(eval_set[TASK_COLUMN]))
    return names if any(names) else []


def task_metric_name(task: str) -> str:
    """`eval_loss/<task>` key part: a task name as a TensorBoard / CSV friendly word."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task) or "untagged"


class TaskTaggingCollator:
    """The eval collator: the inner collator's batch plus `task_ids` (each row's task as an
    index into `tasks`), which `PerTaskEvalTrainer` removes before the model's forward."""

    def __init__(self, inner, tasks: list[str]):
        self.inner = inner
        self.task_index = {task: index for index, task in enumerate(tasks)}

    def __call__(self, features: list[dict]) -> dict:
        import torch

        task_ids = [self.task_index[feature.pop(TASK_COLUMN)] for feature in features]
        batch = self.inner(features)
        batch["task_ids"] = torch.tensor(task_ids, dtype=torch.long)
        return batch


def decoder_and_head(model):
    """The decoder (its last hidden state, final norm included) and the lm_head of a causal
    LM, through PEFT's wrapper (LoRA's layers sit inside the decoder, so its adapters apply);
    None for a model not of `PLAIN_LM_HEAD_TYPES`."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_LM_HEAD_TYPES:
        return None
    return base.get_decoder(), base.get_output_embeddings()


def answer_token_losses(decoder, head, inputs: dict,
                        chunk_tokens: int = EVAL_LOSS_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed next-token loss over its answer tokens, and their count (HF's causal-LM
    shift: position t predicts label t+1; -100 is ignored), without the batch's logits: the
    decoder's last hidden states at the answer positions go through lm_head `chunk_tokens`
    positions at a time, each chunk's logits upcast to fp32 for the cross-entropy as HF's loss
    does. A batch's full logits (rows x length x a 150k vocabulary, upcast) made evaluation
    the memory peak of a trial; here it is one chunk's."""
    labels = inputs["labels"]
    batch = {key: value for key, value in inputs.items() if key not in ("labels", "num_items_in_batch")}
    hidden = decoder(**batch, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    answer = targets != -100
    rows = answer.nonzero()[:, 0]
    states, wanted = hidden[:, :-1][answer], targets[answer]
    del hidden
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    for start in range(0, wanted.numel(), chunk_tokens):
        end = start + chunk_tokens
        logits = head(states[start:end]).float()
        sums.index_add_(0, rows[start:end],
                        torch.nn.functional.cross_entropy(logits, wanted[start:end], reduction="none"))
        del logits
    return sums, answer.sum(dim=1)


class PerTaskEvalTrainer(Trainer):
    """A HF `Trainer` whose evaluation computes the loss without the batch's full logits
    (`answer_token_losses`: HF's eval_loss, the mean loss per answer token, to float
    rounding) and also reports `eval_loss/<task>`: the mean loss per answer token of each
    task, from the same forward pass (no second evaluation). Models outside
    `PLAIN_LM_HEAD_TYPES`, and evaluations that want predictions, take HF's own path."""

    def __init__(self, *args, eval_collator: TaskTaggingCollator | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self._task_totals = None  # [task, (loss sum, token count)] during an evaluation
        self._loss_only_evaluation = False  # during an evaluation that keeps no predictions
        self.step_loss_watch: Callable | None = None  # StopOnNonFinite.note_step_loss (build_hf_trainer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.step_loss_watch is not None:
            self.step_loss_watch(loss)
        return loss

    def _load_scaler(self, checkpoint):
        # A checkpoint saved under fp16 autocast holds the loss scaler's state; HF loads it
        # whenever the file is there, and fails on a trainer without a scaler (plain fp32):
        # the precision ladder's last rung resumes such checkpoints.
        if self.accelerator.scaler is not None:
            super()._load_scaler(checkpoint)

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_ids = inputs.pop("task_ids", None)  # never reaches the model
        parts = (decoder_and_head(self.accelerator.unwrap_model(model))
                 if self._loss_only_evaluation and not model.training else None)
        if parts is not None:
            rows = []

            def loss_only(**batch):
                """The model's forward as far as HF's compute_loss reads it: the loss alone.
                HF still normalises it (num_items_in_batch, averaging across devices)."""
                num_items = batch.pop("num_items_in_batch", None)
                sums, counts = answer_token_losses(*parts, batch)
                rows.append((sums, counts))
                return {"loss": sums.sum() / (counts.sum() if num_items is None else num_items)}

            loss, outputs = super().compute_loss(loss_only, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if task_ids is not None and self._task_totals is not None:
                self._add_row_totals(*rows[0], task_ids)
            return (loss, outputs) if return_outputs else loss
        if task_ids is None or self._task_totals is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        self._add_task_losses(outputs["logits"], inputs["labels"], task_ids)
        return (loss, outputs) if return_outputs else loss

    def _add_row_totals(self, sums, counts, task_ids) -> None:
        """Each row's answer-token loss sum and count, added to its task."""
        totals = torch.stack([sums.detach().double(), counts.double()], dim=1).cpu()
        self._task_totals.index_add_(0, task_ids.cpu(), totals)

    def _add_task_losses(self, logits, labels, task_ids) -> None:
        """Each row's summed next-token loss over its answer tokens (HF's causal-LM shift:
        position t predicts t+1; -100 is ignored), added to its task, from the logits of HF's
        own path (models outside PLAIN_LM_HEAD_TYPES). Row by row and on the answer positions
        only: a float copy of a whole batch's logits would cost gigabytes more."""
        import torch

        totals = torch.zeros((labels.shape[0], 2), dtype=torch.float64)
        for row in range(labels.shape[0]):
            targets = labels[row, 1:]
            answer = targets != -100
            if answer.any():
                loss = torch.nn.functional.cross_entropy(logits[row, :-1][answer].float(), targets[answer],
                                                         reduction="sum")
                totals[row] = torch.tensor([loss.item(), answer.sum().item()], dtype=torch.float64)
        self._task_totals.index_add_(0, task_ids.cpu(), totals)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        # HF's own rule (Trainer.evaluation_loop): predictions are kept unless asked not to
        loss_only = prediction_loss_only if prediction_loss_only is not None else self.args.prediction_loss_only
        self._loss_only_evaluation = bool(loss_only)
        try:
            return self._evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        finally:
            self._loss_only_evaluation = False

    def _evaluation_loop(self, dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix):
        if self.eval_collator is None:
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                           metric_key_prefix)

        tasks = list(self.eval_collator.task_index)
        self._task_totals = torch.zeros((len(tasks), 2), dtype=torch.float64)
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            totals = self._task_totals
        finally:
            self._task_totals = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = totals.to(self.args.device)  # every rank evaluated its shard of the rows
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        for task, (loss_sum, tokens) in zip(tasks, totals.tolist()):
            if tokens:
                output.metrics[f"{metric_key_prefix}_loss/{task_metric_name(task)}"] = loss_sum / tokens
        return output


# --------------------------------------------------------------------------- callbacks


def peak_memory_mb() -> float:
    """Peak GPU memory of this process when on CUDA, else its peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # Linux: VmHWM, which reset_peak_memory resets. Not ru_maxrss: it also holds, for good, the
    # peak of the process that started this one (taken at exec), e.g. a bigger Ray process.
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.MULTILINE).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_memory() -> None:
    """Count this trial's peak memory from here: a reused trial actor (Tune's reuse_actors)
    trained other trials before, and both measures above are per process."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the process's peak resident set (VmHWM, peak_memory_mb's measure)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak stays the process's own, possibly an earlier trial's


class ThroughputMeter(TrainerCallback):
    """Times the training steps (not evaluations or saves): samples/s, non-pad tokens/s,
    steps/s, peak memory, how long the process took to reach its first step, the whole
    run's projected wall time, and MFU when the device's peak is known (lexiray.memory)."""

    def __init__(self, started_at: float | None = None, clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time, flops_per_token: float | None = None,
                 peak_flops: float | None = None, hourly_usd: float | None = None, paid_before_s: float = 0.0):
        self.started_at = started_at  # wall time the trial was launched, for startup_s
        # lexiray.cost: the trial's price an hour (None: no cost reported), and the seconds its
        # earlier attempts were paid for; this attempt is paid from started_at
        self.hourly_usd, self.paid_before_s = hourly_usd, paid_before_s
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops  # per device
        self.clock, self.wall_clock = clock, wall_clock
        self.train_seconds = 0.0
        self.step_began: float | None = None
        self.first_step_at: float | None = None
        self.first_step_clock = self.last_step_end = 0.0
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step  # > 0 after a restore
        self.start_tokens = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_began = self.clock()
        if self.first_step_at is None:
            self.first_step_at = self.wall_clock()
            self.first_step_clock = self.step_began

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_began is not None:
            self.last_step_end = self.clock()
            self.train_seconds += self.last_step_end - self.step_began
            self.step_began = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Training logs also carry the throughput so far: the TensorBoard callback (after
        this one) draws it as curves. `state.log_history` took its copy before callbacks run."""
        if logs is not None and "loss" in logs and state.global_step > self.start_step:
            current = self.metrics(args, state)
            for key in CURVE_KEYS:  # lexiray.results.METRICS: the ones shown as curves
                logs[key] = current[key]

    def metrics(self, args, state) -> dict:
        """`report`'s measurements as result keys."""
        return self.report(args, state).to_result()

    def report(self, args, state) -> TrialReport:
        """The throughput so far, as the part of a trial's report it fills in."""
        steps = state.global_step - self.start_step
        samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        seconds = max(self.train_seconds, 1e-9)
        tokens = state.num_input_tokens_seen - self.start_tokens
        # steps over the whole training phase, evaluations and checkpoints included
        phase = (steps / (self.last_step_end - self.first_step_clock)
                 if steps > 1 and self.first_step_at is not None else None)
        rate = phase if phase is not None else steps / seconds
        started = self.started_at is not None and self.first_step_at is not None
        now = self.wall_clock()
        return TrialReport(
            samples_per_second=samples / seconds,
            tokens_per_second=tokens / seconds,
            steps_per_second=steps / seconds,
            peak_memory_mb=peak_memory_mb(),
            total_steps=state.max_steps,
            world_size=args.world_size,
            resumed_from_step=self.start_step,  # > 0 after a restore: steps kept
            phase_steps_per_second=phase,
            first_step_at=self.first_step_at,  # wall clock: benchmarks line trials up
            # the whole run at the rate so far (evaluations and saves included when measured)
            projected_wall_s=state.max_steps / rate if steps > 0 else None,
            # every device of the run counts toward the peak
            mfu=mfu(tokens / seconds, self.flops_per_token, self.peak_flops * args.world_size)
            if self.flops_per_token and self.peak_flops else None,
            startup_s=self.first_step_at - self.started_at if started else None,
            reported_at=now,
        ).merged(self.cost(state, now, rate if steps > 0 else None))

    def cost(self, state, now: float, rate: float | None) -> TrialReport:
        """The trial's cost so far (every attempt, from its start: lexiray.cost) and of its whole
        run: the steps left at the rate so far (evaluations and saves included when measured)."""
        if self.hourly_usd is None or self.started_at is None:
            return TrialReport()
        paid = self.paid_before_s + max(now - self.started_at, 0.0)
        left = max(state.max_steps - state.global_step, 0) / rate if rate else None
        return TrialReport(paid_s=paid, cost_usd=usd(paid, self.hourly_usd),
                           projected_cost_usd=usd(paid + left, self.hourly_usd) if left is not None else None)


class EvaluateAndSaveAtLastStep(TrainerCallback):
    """The last step is always evaluated and saved, so the final model is reported and kept
    even when max_steps is not a multiple of save_steps."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


class StopWhenAsked(TrainerCallback):
    """Ends training at the next step once `should_stop()` says so, without saving or
    evaluating that step: how a trial that trains in its Tune actor stops promptly when
    ASHA stops it, so Tune can hand the warm actor (torch and the model's code imported)
    to the next trial instead of starting a new process."""

    def __init__(self, should_stop):
        self.should_stop = should_stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop():
            control.should_training_stop = True
            control.should_save = control.should_evaluate = control.should_log = False
        return control


class StopOnNonFinite(TrainerCallback):
    """Stops training at once when the training loss, the gradient norm or eval_loss turns
    non-finite, without saving (or evaluating) that state: the last checkpoint stays the last
    finite one. `found` says what and when (lexiray.precision: the worker then backs off to a
    safer precision, or records the trial as diverged).

    `each_step`: also every micro-batch's loss (fed by `PerTaskEvalTrainer.training_step`), so
    the stop comes at the step that went wrong, not at the next log; single-worker trials
    only: a rank stopping on its own loss would leave the others waiting in their
    collectives, so several workers watch the logged values, which all ranks share.
    `grad_norm`: False under fp16 autocast, where an inf gradient norm is the loss scaler
    skipping a step (and lowering its scale), not a failure."""

    def __init__(self, each_step: bool = True, grad_norm: bool = True):
        self.each_step, self.grad_norm = each_step, grad_norm
        self.found: NonFinite | None = None
        self.step_loss: float | None = None  # the first non-finite micro-batch loss of this step

    def note_step_loss(self, loss) -> None:
        if self.step_loss is None and not torch.isfinite(loss).all():
            self.step_loss = float(loss.float().mean())

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_loss is not None:
            self._stop(control, NonFinite(TRAIN_LOSS, self.step_loss, state.global_step, state.max_steps))
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        watched = (TRAIN_LOSS, EVAL_LOSS, GRAD_NORM) if self.grad_norm else (TRAIN_LOSS, EVAL_LOSS)
        for key in watched:
            if key in (logs or {}) and not is_finite(logs[key]):
                self._stop(control, NonFinite(key, float(logs[key]), state.global_step, state.max_steps))
                break
        return control

    def _stop(self, control, found: NonFinite) -> None:
        if self.found is None:
            self.found = found
        control.should_training_stop = True
        control.should_save = control.should_evaluate = False


class ReportOnSave(TrainerCallback):
    """After each checkpoint save: one report with the newest value of every logged metric,
    the throughput, and the HF checkpoint, through the trial's channel (`report(metrics,
    checkpoint_dir)`, lexiray.channel: Ray persists the checkpoint to storage and Tune's
    schedulers see the metrics). Evaluation runs on every save step (config check), so the
    reported eval_loss is the checkpoint's own."""

    def __init__(self, throughput: ThroughputMeter, report: Callable[..., None],
                 constants: TrialReport | None = None):
        self.throughput = throughput
        self.report = report
        self.constants = constants or TrialReport()  # e.g. the precision the worker chose

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step == 0 and metrics and "eval_loss" in metrics:
            # the untrained model's loss (eval_on_start): every later report carries it
            self.constants = replace(self.constants, eval_loss_at_start=metrics["eval_loss"])

    def on_save(self, args, state, control, **kwargs):
        logged = {}
        for entry in state.log_history:  # the newest value of each key wins
            logged.update(entry)
        report = TrialReport.from_result(logged)  # HF's own keys (loss, learning_rate, ...) stay as `extra`
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        if losses:
            report = replace(report, train_loss=losses[-1])
        report = report.merged(self.throughput.report(args, state)).merged(self.constants)
        metrics = replace(report, step=state.global_step).to_result()
        local = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not local.is_dir():  # a rank that saved nothing still reports: Train waits for all
            self.report(metrics)
            return
        with tempfile.TemporaryDirectory() as staging:
            # Hard links: the HF checkpoint is never modified after its save, and Ray copies
            # the folder to storage before report returns.
            shutil.copytree(local, Path(staging) / CHECKPOINT_NAME, copy_function=_link_or_copy)
            self.report(metrics, checkpoint_dir=staging)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class PrintTrainingProgress(TrainerCallback):
    """One line per log for `lexiray train` (a tuning run prints Tune's events instead)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key in ("loss", "eval_loss", "learning_rate"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4g}")
        if len(parts) > 1:
            print("  " + "  ".join(parts), flush=True)


class KillWorkerOnce(TrainerCallback):
    """`--chaos`: SIGKILL this worker at a step, or inside a checkpoint save (placed before
    `ReportOnSave`, so the kill strikes before Ray persists that checkpoint)."""

    def __init__(self, chaos: ChaosSpec):
        self.chaos = chaos

    def on_step_end(self, args, state, control, **kwargs):
        if self.chaos.action == "kill-worker" and state.global_step == self.chaos.step:
            fire_once(self.chaos)

    def on_save(self, args, state, control, **kwargs):
        if self.chaos.action == "kill-save" and state.global_step == self.chaos.step:
            fire_once(self.chaos)


def tensorboard_callbacks(target: str, scratch: str) -> list[TrainerCallback]:
    """HF's TensorBoard callback writing the trial's curves into the experiment folder, so
    `tensorboard --logdir` on the experiment shows every trial. The writer needs a local
    folder: for an experiment at a URI it writes under `scratch` and `UploadTensorBoard`
    copies the files to the URI at every checkpoint and at the end."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    if not is_uri(target):
        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=target))]
    local = os.path.join(scratch, "tensorboard")
    writer = SummaryWriter(log_dir=local)
    return [TensorBoardCallback(tb_writer=writer), UploadTensorBoard(writer, local, target)]


class UploadTensorBoard(TrainerCallback):
    """Mirrors a local TensorBoard folder to the experiment's URI (see tensorboard_callbacks)."""

    def __init__(self, writer, local: str, target: str):
        self.writer, self.local, self.target = writer, local, target

    def _upload(self):
        self.writer.flush()
        upload_folder(Path(self.local), self.target)

    def on_save(self, args, state, control, **kwargs):
        self._upload()

    def on_train_end(self, args, state, control, **kwargs):
        self._upload()
