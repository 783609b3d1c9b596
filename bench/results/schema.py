"""The record types, `RunRecord` and `SweepRecord`, with a JSON round trip. A new optional field needs no schema bump; a
renamed or removed one does, with an upgrade of the previous schema in `upgraded` (docs/records.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

RECORD_SCHEMA = 2
# A run's status. --resume skips the final ones and retries a crashed ("failed") run.
FINAL_STATUSES = ("finished", "diverged", "oom", "unsupported")
RUN_STATUSES = (*FINAL_STATUSES, "failed")
# Schema 1 kept these beside `config` too; schema 2 reads them from it (or, for `device`, from `env`).
SCHEMA1_COPIES = ("model", "dataset", "data_source", "preset", "recipe", "seed", "precision", "batch_size",
                  "global_batch_size", "world_size", "num_machines", "device")
# Schema 1 kept these inside `config`; schema 2 keeps them in `settings`, outside the run's identity.
SCHEMA1_SETTINGS = ("warmup_steps", "num_workers", "data_dir", "checkpoint_minutes", "inference", "pricing")


class RecordError(ValueError):
    """A record that cannot be read; the message says why in a few words."""


def configured(name: str) -> property:
    """A read-only view of one configuration value (the oldest records may lack some: None)."""
    return property(lambda record: record.config.get(name), doc=f"The configuration's `{name}`.")


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose meaning docs/records.md shows."""
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class RunRecord:
    """One run: what ran, on what, what it measured and how it ended."""

    run_id: str = doc("The run's name: a readable prefix and a hash of its configuration (everything that changes "
                      "its result); the same configuration always gets the same id.")
    status: str = doc("`finished`, `diverged` (the loss became NaN or infinite), `oom`, `unsupported` (a setting "
                      "this device cannot run, such as SyncBatchNorm on a CPU: `error` says which and why) or `failed` "
                      "(an error; `--resume` tries it again).")
    config: dict[str, Any] = doc("The configuration (bench/suite/config.py RunConfig): model, dataset, seed, preset, "
                                 "recipe (every hyper-parameter), epochs, per-process batch, precision, memory "
                                 "format, compile mode, data source and sizes, target, processes and machines, and "
                                 "`communication` (DDP's hook, buckets and graph, SyncBatchNorm).")
    settings: dict[str, Any] = doc("How the run was measured, outside its identity: warm-up steps, loader threads, "
                                   "checkpoint cadence, the inference options, the price and the communication "
                                   "probe's repeats and steps.", default_factory=dict)
    env: dict[str, Any] = doc("What it ran on: versions, device and its count, processes, TF32, host, git commit "
                              "and source digest, the machine's fixed state, and the link between the processes "
                              "(`link`: backend, NCCL version, NCCL_* settings, `nvidia-smi topo -m`).",
                              default_factory=dict)
    started_at: str | None = doc("Local time the run started (ISO 8601, with its UTC offset).", default=None)
    finished_at: str | None = doc("Local time the record was written.", default=None)
    error: str | None = doc("What stopped a run that did not finish, in one line.", default=None)
    traceback: str | None = doc("The error's traceback, for a `failed` run.", default=None)
    class_names: list[str] = doc("The dataset's class names, in label order.", default_factory=list)
    facts: dict[str, Any] = doc("The model's parameters and GFLOPs per image (forward, training).",
                                default_factory=dict)
    history: list[dict[str, Any]] = doc("One row per validation (docs/measurements.md: the `history` fields).",
                                        default_factory=list)
    metrics: dict[str, Any] = doc("The run's measurements (docs/measurements.md: the `metrics` fields).",
                                  default_factory=dict)
    test_confusion: list[list[int]] | None = doc("The test pass's confusion matrix, [true class][predicted], up to "
                                                 "100 classes.",
                                                 default=None)
    test_per_class_acc: list[float] | None = doc("Test accuracy per class.", default=None)
    test_top_confusions: list[list[int]] | None = doc("The test pass's most frequent confusions, [true class, predicted "
                                                      "class, images, images of the true class], most frequent first "
                                                      "(the whole matrix is kept up to 100 classes only).", default=None)
    device_state: list[dict[str, Any]] = doc("Each process's device snapshots when the timed window opened and when "
                                             "training ended (clocks, temperature, throttling, other processes).",
                                             default_factory=list)
    inference: dict[str, Any] | None = doc("The trained model's inference measurement in full (latencies, "
                                           "throughput, options).", default=None)
    comm_probe: dict[str, Any] | None = doc("The communication probe after a run of several processes "
                                            "(bench/training/probes.py) in full: each repeat's step milliseconds "
                                            "per process with and without gradient synchronisation, gradient bytes "
                                            "as computed and on the wire, and each all-reduce's bytes and seconds.",
                                            default=None)
    schema: int = doc("The record format's version.", default=RECORD_SCHEMA)

    # What schema 1 stored twice, read from the one place it now lives.
    model = configured("model")
    dataset = configured("dataset")
    seed = configured("seed")
    preset = configured("preset")
    precision = configured("precision")
    batch_size = configured("batch_size")  # per process
    world_size = configured("world_size")

    @property
    def recipe(self) -> str | None:
        return (self.config.get("recipe") or {}).get("name")

    @property
    def num_machines(self) -> int:
        return self.config.get("num_machines") or 1

    @property
    def global_batch_size(self) -> int | None:
        return None if self.batch_size is None or self.world_size is None else self.batch_size * self.world_size

    @property
    def data_source(self) -> str | None:
        synthetic = self.config.get("synthetic")
        return None if synthetic is None else "synthetic" if synthetic else "real"

    @property
    def device(self) -> str | None:
        return self.env.get("device_name")

    def to_json(self) -> dict[str, Any]:
        return as_json(self)

    @classmethod
    def from_json(cls, data: object) -> RunRecord:
        data = upgraded(data, run_schema1)
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        missing = [name for name in ("model", "dataset") if not config.get(name)]
        if missing:
            raise RecordError(f"missing fields {missing} (in its configuration)")
        record = from_fields(cls, data)
        if record.status not in RUN_STATUSES:
            raise RecordError(f"status {record.status!r}; expected one of {', '.join(RUN_STATUSES)}")
        return record


@dataclass
class SweepRecord:
    """One speed-sweep point (bench/speed.py): a setting, how it was timed, and what it measured."""

    model: str = doc("The model.")
    dataset: str | None = doc("Whose input shape and classes (and, with `data` ffcv, data) the point used.")
    mode: str = doc("`train` or `infer`.")
    precision: str = doc("`no` (fp32/TF32), `bf16` or `fp16`.")
    channels_last: bool = doc("Whether the model and inputs were channels_last.")
    compile: str = doc("`off` (eager) or the torch.compile mode.")
    batch_size: int = doc("Batch per process.")
    data: str = doc("`synthetic` (device-resident batches) or `ffcv` (the real loader).")
    status: str = doc("`ok`, `oom` or `error`.")
    world_size: int = doc("Processes, each timing the same steps in lock-step.", default=1)
    in_channels: int | None = doc("Image channels of the input.", default=None)
    env: dict[str, Any] = doc("What it ran on (as a run record's).", default_factory=dict)
    measured_at: str | None = doc("Local time of the measurement.", default=None)
    warmup: int | None = doc("Untimed steps first.", default=None)
    steps: int | None = doc("Steps per timed window.", default=None)
    windows: int | None = doc("Timed windows; the median is reported.", default=None)
    error: str | None = doc("Why a point did not measure (`oom`, `error`).", default=None)
    images_per_s: float | None = doc("Images per second, all processes (median window).", default=None)
    step_time_ms: float | None = doc("Milliseconds per step (median window).", default=None)
    window_step_times_ms: list[float] = doc("Each window's milliseconds per step.", default_factory=list)
    peak_mem_allocated_bytes: int | None = doc("Peak allocated device memory per process over the timed steps.",
                                               default=None)
    peak_mem_reserved_bytes: int | None = doc("Peak memory reserved by the caching allocator.", default=None)
    achieved_tflops: float | None = doc("FLOP/s achieved, in TFLOP/s.", default=None)
    mfu: float | None = doc("Achieved over the devices' peak FLOP/s (GPUs only).", default=None)
    params: int | None = doc("The model's parameters.", default=None)
    gflops_per_image: float | None = doc("GFLOPs per image of the point's mode.", default=None)
    search: str | None = doc("`max-batch` when `--find-max-batch` chose the batch.", default=None)
    max_batch: dict[str, Any] | None = doc("That search: the batch found, what stopped it, every probe.",
                                           default=None)
    schema: int = doc("The record format's version.", default=RECORD_SCHEMA)

    @property
    def device(self) -> str | None:
        return self.env.get("device_name")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def to_json(self) -> dict[str, Any]:
        return as_json(self)

    @classmethod
    def from_json(cls, data: object) -> SweepRecord:
        return from_fields(cls, upgraded(data, sweep_schema1))


def as_json(record: RunRecord | SweepRecord) -> dict[str, Any]:
    """The record as JSON-ready data, its schema first."""
    data = dataclasses.asdict(record)
    return {"schema": data.pop("schema"), **data}


def upgraded(data: object, from_schema1) -> dict[str, Any]:
    """`data` in the current schema: schema 1 upgraded by `from_schema1`; a newer schema is an error."""
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema > RECORD_SCHEMA:
        raise RecordError(f"schema {schema!r}: written by a newer deepnets-bench (this one reads up to "
                          f"{RECORD_SCHEMA})")
    return from_schema1(data) if schema == 1 else data


def from_fields(cls: type, data: dict[str, Any]):
    """`cls` from the fields it declares (fields a newer version added are ignored); a missing required one is an
    error."""
    declared = dataclasses.fields(cls)
    missing = [item.name for item in declared if item.name not in data
               and item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING]
    if missing:
        raise RecordError(f"missing fields {missing}")
    return cls(**{item.name: data[item.name] for item in declared if item.name in data})


def run_schema1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 run record as schema 2: the copies beside `config` dropped, the measurement settings moved out of
    it; a failure record of schema 1 (no configuration) keeps its model and dataset as its configuration."""
    config, env = dict(data.get("config") or {}), dict(data.get("env") or {})
    for key in ("model", "dataset", "preset", "seed", "precision", "batch_size", "world_size", "num_machines"):
        if key in data:  # the oldest records' configurations lack some (world_size, say)
            config.setdefault(key, data[key])
    if "data_source" in data:
        config.setdefault("synthetic", data["data_source"] == "synthetic")
    if data.get("device"):
        env.setdefault("device_name", data["device"])
    settings = {key: config.pop(key) for key in SCHEMA1_SETTINGS if key in config}
    kept = {key: value for key, value in data.items() if key not in SCHEMA1_COPIES}
    return {**kept, "schema": RECORD_SCHEMA, "config": config, "settings": settings, "env": env}


def sweep_schema1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 sweep point as schema 2: its copies of the device name and the global batch dropped."""
    return {**{key: value for key, value in data.items() if key not in ("device", "global_batch_size")},
            "schema": RECORD_SCHEMA}


def markdown_fields() -> str:
    """Both record types' fields as markdown tables (docs/records.md embeds them)."""
    lines = []
    for cls in (RunRecord, SweepRecord):
        lines += [f"**{cls.__name__}** ({cls.__doc__.strip()})", "", "| field | meaning |", "|---|---|"]
        lines += [f"| `{item.name}` | {item.metadata['doc']} |" for item in dataclasses.fields(cls)]
        lines.append("")
    return "\n".join(lines).rstrip("\n")


if __name__ == "__main__":
    print(markdown_fields())
