"""The training loop: `train(config, workdir)`, readable top to bottom.

Everything per step stays on the device: the batch for step s is a pure function of
(seed, s, process), the step is one jitted call with donated state, and its scalar metrics
are fetched one step later so the host never waits on the device just to log.
"""
from __future__ import annotations

import contextlib
import functools
import math
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from jaxlab.analysis import depth
from jaxlab.data import build_dataset
from jaxlab.errors import ConfigError, TrainingError
from jaxlab.models.decoding import generate
from jaxlab.models.sampling import decode_bytes
from jaxlab.train import distributed, mesh as mesh_lib, metrics as metrics_lib, preemption
from jaxlab.train import workdir as workdir_lib
from jaxlab.train.checkpoint import Checkpointer, abstract_like
from jaxlab.train.lock import WorkdirLock
from jaxlab.train.optim import build_optimizer
from jaxlab.train.state import ModelDef, init_state, state_shardings
from jaxlab.train.step import make_eval_step, make_train_step


def check_model_fits_data(config, dataset) -> None:
    model = config.model
    if dataset.task not in ("lm", "classification", "regression"):
        raise ConfigError(f"dataset {config.data.name!r} is a {dataset.task} task; the trainer "
                          f"trains lm, classification and regression datasets")
    if dataset.task == "regression" and config.train.loss != "mse":
        raise ConfigError(f"dataset {config.data.name!r} is a regression task; set "
                          f"train.loss=mse (got {config.train.loss!r})")
    if dataset.task == "lm":
        if "vocab_size" not in model or model.vocab_size < dataset.vocab_size:
            raise ConfigError(f"model.vocab_size={model.get('vocab_size')} is smaller than dataset "
                              f"{config.data.name!r} vocabulary of {dataset.vocab_size}")
        if model.get("position") == "learned" and model.max_len < config.data.seq_len:
            raise ConfigError(f"model.max_len={model.max_len} is shorter than data.seq_len="
                              f"{config.data.seq_len}")
    elif model.get("num_classes", 0) < dataset.num_classes:
        raise ConfigError(f"model.num_classes={model.get('num_classes')} is smaller than the "
                          f"{dataset.num_classes} classes of dataset {config.data.name!r}")


POSITIVE_KEYS = ("train.steps", "train.batch_size", "train.grad_accum", "train.eval_every",
                 "train.eval_steps", "ckpt.every", "ckpt.keep", "log.every")
DTYPES = ("float32", "bfloat16", "float16")


def check_run_config(config) -> None:
    """Errors the trainer would otherwise meet deep inside a loop or a compile."""
    for dotted in POSITIVE_KEYS:
        group, key = dotted.split(".")
        value = config[group][key]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{dotted}={value!r} must be a positive integer")
    dtype = config.model.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not supported; valid: {', '.join(DTYPES)}")


def check_workdir(workdir: pathlib.Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {str(workdir)!r} is a file, not a directory; "
                          f"give a new or existing run directory")


class Run:
    """Everything a training run builds before its first step; tests use it directly."""

    def __init__(self, config, devices=None):
        distributed.maybe_initialize()
        check_run_config(config)
        self.config = config
        self.dataset = build_dataset(config.data)
        check_model_fits_data(config, self.dataset)
        self.mesh = mesh_lib.build_mesh(config.mesh, devices)
        rules = [tuple(r) for r in config.sharding.rules]
        mesh_lib.check_batch(config.train.batch_size, config.train.grad_accum, rules, self.mesh)
        self.batch_sharding = mesh_lib.batch_sharding(rules, self.mesh)
        with jax.set_mesh(self.mesh):
            self.model_def = ModelDef.create(config.model, config.seed)
            self.tx, self.schedule = build_optimizer(config.optim, config.train.steps)
            self._init = functools.partial(init_state, config.model, self.tx, config.seed)
            self.abstract_state = jax.eval_shape(self._init)
            self.shardings = state_shardings(self.abstract_state, self.model_def, self.tx,
                                             self.mesh, rules, config.sharding.overrides)
            self.train_step = jax.jit(
                make_train_step(self.model_def, self.tx, self.schedule, config.train),
                in_shardings=(self.shardings, self.batch_sharding),
                out_shardings=(self.shardings, None), donate_argnums=0)
            self.eval_step = jax.jit(make_eval_step(self.model_def, config.train),
                                     in_shardings=(self.shardings, self.batch_sharding))

    def init(self) -> dict:
        with jax.set_mesh(self.mesh):
            return jax.jit(self._init, out_shardings=self.shardings)()

    def restore_target(self) -> Any:
        return abstract_like(self.abstract_state, self.shardings)

    def batch(self, split: str, step: int) -> dict[str, jax.Array]:
        local = self.dataset.batch(split, step, self.config.train.batch_size, seed=self.config.seed,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
        return mesh_lib.to_global(local, self.batch_sharding, jax.process_count())

    def evaluate(self, state: dict) -> dict[str, float]:
        totals: dict[str, float] = {}
        with jax.set_mesh(self.mesh):
            for i in range(self.config.train.eval_steps):
                sums = jax.device_get(self.eval_step(state, self.batch("valid", i)))
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        weight = max(totals["weight_sum"], 1.0)
        return self.named_metrics("valid_", totals["loss_sum"] / weight, totals["correct_sum"] / weight)

    def named_metrics(self, prefix: str, loss: float, accuracy: float) -> dict[str, float]:
        out = {f"{prefix}loss": loss}
        if self.dataset.task != "regression":  # accuracy means nothing for real-valued targets
            out[f"{prefix}accuracy"] = accuracy
        if self.dataset.bytes_per_token:
            out[f"{prefix}bpb"] = loss / math.log(2) / self.dataset.bytes_per_token
        return out

    def diagnostics(self, state: dict) -> dict[str, float]:
        """Per-layer depth diagnostics on the first validation batch, as flat scalars
        (`depth/<name>/<layer>`): stream RMS and variance, angular distance, gradient norm,
        loss change when the layer is skipped."""
        model = self.model_def.merge(state["params"], state["extra"])
        if not hasattr(model, "blocks"):
            raise ConfigError(f"log.diagnostics_every needs a model with blocks; model "
                              f"{self.config.model.name!r} has none")
        with jax.set_mesh(self.mesh):
            report = depth.depth_report(model, self.batch("valid", 0), self.config.train.loss)
        return {f"depth/{name}/{i}": float(v) for name, values in report.items()
                for i, v in enumerate(np.asarray(values))}

    def sample(self, state: dict, length: int = 160) -> str | None:
        """A short generated continuation of a validation prompt (byte-level LMs only)."""
        if self.dataset.task != "lm" or self.dataset.bytes_per_token != 1.0:
            return None
        with jax.set_mesh(self.mesh):
            seq_len = self.config.data.seq_len
            prompt = self.dataset.batch("valid", 0, 1, seed=self.config.seed)["inputs"][0]
            prompt = prompt[:min(48, seq_len // 2)]
            model = self.model_def.merge(state["params"], state["extra"])
            # Cached decoding; it stops at the training length, past which positions are untrained.
            steps = min(length, seq_len - len(prompt))
            tokens = generate(model, prompt, steps, temperature=0.8,
                              rng=jax.random.key(self.config.seed))
        return decode_bytes(prompt) + decode_bytes(np.asarray(tokens))


def train(config, workdir: str | pathlib.Path, *, devices=None, progress: bool = True,
          emit: Callable[[str], None] = print) -> dict:
    """Trains `config` in `workdir` (resuming its latest checkpoint) and returns a summary dict.

    SIGTERM or SIGINT saves a checkpoint of the current step and raises `Preempted`; rerunning
    the same command resumes from it.
    """
    workdir = pathlib.Path(workdir)
    check_workdir(workdir)
    run = Run(config, devices)
    is_writer = jax.process_index() == 0
    changes = workdir_lib.check_config(workdir, config.to_dict(), config.ckpt.allow_config_change)
    with WorkdirLock(workdir) if is_writer else contextlib.nullcontext():
        ckpt = Checkpointer(workdir / "checkpoints", keep=config.ckpt.keep,
                            async_save=config.ckpt.async_save, warn=emit)
        try:
            return _train(run, config, workdir, ckpt, changes, is_writer, progress, emit)
        finally:
            ckpt.close()


def _train(run: Run, config, workdir: pathlib.Path, ckpt: Checkpointer, changes, is_writer: bool,
           progress: bool, emit) -> dict:
    state = run.init() if ckpt.latest_step() is None else ckpt.restore(run.restore_target())[0]
    start, total = int(jax.device_get(state["step"])), int(config.train.steps)
    if is_writer:
        if changes is None or changes:
            workdir_lib.write_config(workdir, config.to_dict(), None if changes is None else start)
        # Rows past the checkpoint belong to steps that are about to be recomputed, identically.
        metrics_lib.drop_rows_after(workdir / "metrics.jsonl", start)
        env = workdir_lib.environment(run.dataset.describe())
        env.update(resumed_at_step=start, mesh=dict(run.mesh.shape))
        workdir_lib.write_env(workdir, env)
    writers = _writers(workdir, config, emit) if is_writer else metrics_lib.MetricWriters([])
    if start:
        emit(f"resuming {workdir} from step {start}")
    bar = tqdm(total=total, initial=start, disable=not (progress and is_writer), unit="step",
               dynamic_ncols=True)
    logger = _StepLogger(run, writers, config.log.every)
    last_eval, compile_time_s = None, None
    try:
        with jax.set_mesh(run.mesh), preemption.StopRequest() as stop:
            for step in range(start, total):
                batch = run.batch("train", step)
                called = time.perf_counter()
                state, step_metrics = run.train_step(state, batch)
                if step == start:
                    # The first call traces and compiles; the step itself runs asynchronously.
                    compile_time_s = time.perf_counter() - called
                    if is_writer:
                        _say(emit, f"step {step + 1}: compiled the train step in "
                                   f"{compile_time_s:.2f} s")
                logger.fetch_previous()
                logger.pending = (step + 1, step_metrics)
                bar.update(1)
                done = step + 1
                eval_due = done % config.train.eval_every == 0 or done == total
                ckpt_due = done % config.ckpt.every == 0 or done == total
                stopping = stop.requested(done)
                if eval_due or ckpt_due or stopping:
                    logger.fetch_previous()  # never checkpoint or evaluate a non-finite state
                if eval_due:
                    last_eval = run.evaluate(state)
                    logger.write(done, last_eval)
                if config.log.get("diagnostics_every") and done % config.log.diagnostics_every == 0:
                    logger.write(done, run.diagnostics(state))
                if ckpt_due or stopping:
                    ckpt.save(done, state, {"step": done, "config": config.to_json()})
                if stopping:
                    ckpt.wait()
                    raise preemption.Preempted(done, stop.signal_name)
                if logger.last_loss is not None:
                    bar.set_postfix(loss=f"{logger.last_loss:.3f}", refresh=False)
            logger.fetch_previous()
        final_eval = last_eval or run.evaluate(state)  # an already finished run evaluates once
        sample = run.sample(state) if config.log.sample else None
    finally:
        bar.close()
        writers.close()
    summary = {"workdir": str(workdir), "steps": total, "resumed_from": start,
               "train_loss": logger.last_loss, **final_eval,
               logger.rate_name: logger.throughput(), "compile_time_s": compile_time_s,
               "sample": sample}
    if logger.last_loss is not None:
        summary.update(run.named_metrics("train_", logger.last_loss, logger.last_accuracy))
    return summary


class _StepLogger:
    """Fetches step metrics one step late, checks them, and writes every `every` steps."""

    def __init__(self, run: Run, writers, every: int):
        self.run, self.writers, self.every = run, writers, every
        lm = run.dataset.task == "lm"
        self.units = run.config.train.batch_size * (run.config.data.seq_len if lm else 1)
        self.rate_name = "tokens_per_s" if lm else "examples_per_s"
        self.max_skips = int(run.config.train.get("max_consecutive_skips", 10))
        self.pending: tuple[int, dict] | None = None
        self.last_loss: float | None = None
        self.last_accuracy: float | None = None
        self.skips, self.consecutive_skips = 0, 0
        self._clock: tuple[int, float] | None = None   # (step, time) after the first fetched step
        self._window: tuple[int, float] | None = None
        self._steps_timed, self._seconds = 0, 0.0

    def fetch_previous(self) -> None:
        if self.pending is None:
            return
        step, device_metrics = self.pending
        self.pending = None
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        self._check_finite(step, values)
        if values.get("skipped"):
            return
        self.last_loss, self.last_accuracy = values["loss"], values["accuracy"]
        now = time.perf_counter()
        if self._clock is not None:  # the first step carries compilation; leave it out
            self._steps_timed += step - self._clock[0]
            self._seconds += now - self._clock[1]
        self._clock = (step, now)
        if step % self.every == 0:
            scalars = self.run.named_metrics("", values["loss"], values["accuracy"])
            scalars.update(grad_norm=values["grad_norm"], lr=values["lr"])
            if "skipped" in values:
                scalars["skipped_steps"] = self.skips
            if self._window is not None and now > self._window[1]:
                seconds = (now - self._window[1]) / (step - self._window[0])
                scalars.update({"step_time_s": seconds, self.rate_name: self.units / seconds})
            self._window = (step, now)
            self.write(step, scalars)

    def _check_finite(self, step: int, values: dict) -> None:
        bad = [name for name in ("loss", "grad_norm") if not math.isfinite(values[name])]
        if not bad:
            self.consecutive_skips = 0
            return
        what = " and ".join(f"{name.replace('_', ' ')} {values[name]}" for name in bad)
        if not values.get("skipped"):
            raise TrainingError(f"non-finite {what} at step {step}; the last good checkpoint is "
                                f"kept; lower optim.lr, set optim.clip_norm, or "
                                f"train.nonfinite=skip")
        self.skips += 1
        self.consecutive_skips += 1
        self.write(step, {"skipped_steps": self.skips})
        if self.consecutive_skips >= self.max_skips:
            raise TrainingError(f"non-finite {what} at step {step}: {self.consecutive_skips} "
                                f"skipped steps in a row (train.max_consecutive_skips="
                                f"{self.max_skips}); the last good checkpoint is kept")

    def write(self, step: int, scalars: dict) -> None:
        self.writers.write(step, scalars)

    def throughput(self) -> float | None:
        return self.units * self._steps_timed / self._seconds if self._seconds else None


def _say(emit, line: str) -> None:
    # Beside the progress bar when printing to the terminal, as the metric lines are.
    if emit is print:
        tqdm.write(line)
    else:
        emit(line)


def _writers(workdir: pathlib.Path, config, emit) -> metrics_lib.MetricWriters:
    writers = [metrics_lib.JsonlWriter(workdir / "metrics.jsonl"),
               metrics_lib.TextWriter(lambda line: tqdm.write(line) if emit is print else emit(line))]
    if config.log.tensorboard and metrics_lib.tensorboard_available():
        writers.append(metrics_lib.TensorBoardWriter(workdir / "tensorboard"))
    return metrics_lib.MetricWriters(writers)
