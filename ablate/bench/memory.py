"""Peak memory of one model's training steps, for `python -m ablate.bench`.

Peak memory: the largest amount of live torch tensor memory during the first two training steps of a
model: its parameters plus what the allocator handed out and had not yet taken back (gradients, AdamW
state, activations, temporaries). On CUDA that is torch.cuda.max_memory_allocated; on CPU it is read
from the allocator's events under torch.profiler (profile_memory=True), which sees every allocation
torch makes on the CPU but not memory held by the Python interpreter or libraries outside torch's
allocator. It is a property of the model and the step, not of the process, so it does not depend on
which model ran before.
"""
from __future__ import annotations

import contextlib
import os
import sys
import torch

from ablate.bench.candidate import Candidate
from ablate.bench.machine import synchronize

MEMORY_NOTE = ("peak MiB: the most live torch tensor memory during a model's first two steps (parameters, "
               "gradients, AdamW state, activations, temporaries); CPU: allocator events under torch.profiler, "
               "CUDA: torch.cuda.max_memory_allocated. Not the process RSS: interpreter and library memory "
               "outside torch's allocator is not counted.")


@contextlib.contextmanager
def quiet_fd2():
    """Silence C-level stderr (the profiler prints start/stop lines there)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def state_bytes(candidate: Candidate) -> int:
    """Bytes of the tensors the model and optimizer hold between steps (parameters, buffers, grads, AdamW state)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if torch.is_tensor(t) and t.device.type == candidate.device.type:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

    for p in candidate.model.parameters():
        add(p)
        add(p.grad)
    for b in candidate.model.buffers():
        add(b)
    for state in candidate.optimizer.state.values():
        for value in state.values():
            add(value)
    return total


def measure_memory(candidate: Candidate, batches, steps: int = 2) -> int:
    """Peak live tensor bytes over `steps` training steps (see the module docstring)."""
    held = state_bytes(candidate)
    device = candidate.device
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for i in range(steps):
            candidate.step(*batches[i % len(batches)])
        return held + torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for i in range(steps):
            candidate.step(*batches[i % len(batches)])
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return held + peak
