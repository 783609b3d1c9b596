"""`--profile`: a torch.profiler capture of a few training steps, as a Chrome/Perfetto trace plus a
top-operators table in the log. The profiled steps come right after warm-up and are kept out of the
throughput window, since profiling slows them."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


class StepProfiler:
    """Starts profiling when the step counter reaches `first_step`, stops `steps` steps later."""

    steps = 5

    def __init__(self, out_dir: Path, device: torch.device, first_step: int) -> None:
        self.out_dir = out_dir
        self.first_step = first_step
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profile = profile(activities=activities, record_shapes=True)
        self._state = "waiting"
        self.trace_path: Path | None = None
        self.top_ops: str | None = None

    def step(self, step: int) -> None:
        """Call after each training step with the number of steps done so far."""
        if self._state == "waiting" and step >= self.first_step:
            self._profile.__enter__()
            self._state = "recording"
        elif self._state == "recording" and step >= self.first_step + self.steps:
            self.close()

    def close(self) -> None:
        if self._state != "recording":
            return
        self._profile.__exit__(None, None, None)
        self._state = "done"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trace_path = self.out_dir / "trace.json"
        self._profile.export_chrome_trace(str(self.trace_path))
        sort_by = "self_cuda_time_total" if any(a == ProfilerActivity.CUDA for a in self._profile.activities) \
            else "self_cpu_time_total"
        self.top_ops = self._profile.key_averages().table(sort_by=sort_by, row_limit=15)
        (self.out_dir / "top_ops.txt").write_text(self.top_ops)
        print(f"profile: trace {self.trace_path} (open in https://ui.perfetto.dev)\n{self.top_ops}")
