"""`torch.multiprocessing` on cuda-ipc: CUDA tensors sent through a Queue or Pipe travel as a
cuda-ipc share (the fd transport by default), so existing code works in pods without hostPID,
where PyTorch's own CUDA IPC fails ("invalid device context" across PID namespaces, EPERM from
`pidfd_getfd` in unprivileged containers).

    import torch.multiprocessing as mp
    import cuda_ipc.torch
    cuda_ipc.torch.register_reducer()     # in the sending process, before sending

    q = mp.get_context("spawn").Queue()
    q.put(torch.ones(1024, device="cuda"))  # the receiver gets a zero-copy CUDA tensor

Each CUDA tensor sent is copied once into shared memory (PyTorch's allocator's memory is not
exportable; tensors made by `cuda_ipc.empty(...).torch()` are sent without a copy) and published
under a private name in `directory` (default `$CUDA_IPC_DIR`, else `/tmp/cuda-ipc-<uid>`). The
receiver maps it and holds a lease; the sender stops publishing once the receiver has it (or
after `timeout` seconds), and its memory is freed after the receiver drops the tensor. A
tensor received twice (e.g. sent to two queues) is two shares. CPU tensors go through PyTorch's
own reducer unchanged.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import warnings
from typing import Any, Optional

import cuda_ipc

_lock = threading.Lock()
_counter = itertools.count()
_settings = {"directory": None, "timeout": 60.0, "transport": "fd"}
_registered = False
_torch_reduce_tensor: Any = None


def _directory() -> str:
    d = _settings["directory"] or os.environ.get("CUDA_IPC_DIR")
    return d or os.path.join("/tmp", f"cuda-ipc-{os.geteuid()}")


def _rebuild(path: str, timeout: float, requires_grad: bool, parameter: bool) -> Any:
    tensor = cuda_ipc.open(path, timeout=timeout).torch()
    if parameter:
        import torch
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def _hold_until_taken(export: "cuda_ipc.Export", timeout: float) -> None:
    """Publishes until the receiver holds the tensor, then stops (its lease keeps the memory)."""
    try:
        export.wait_consumers(1, timeout)
    except cuda_ipc.Timeout:
        warnings.warn(f"cuda_ipc.torch: nobody received {export.path} within {timeout} s: "
                      "unpublished", RuntimeWarning)
    finally:
        export.close()


def _reduce_tensor(tensor: Any) -> Any:
    if not tensor.is_cuda:
        return _torch_reduce_tensor(tensor)
    name = f"t{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"
    path = os.path.join(_directory(), name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cuda_ipc.CopyWarning)
        export = cuda_ipc.share(tensor.detach(), path, transport=_settings["transport"])
    timeout = float(_settings["timeout"])
    threading.Thread(target=_hold_until_taken, args=(export, timeout), daemon=True,
                     name=f"cuda-ipc share {name}").start()
    import torch
    parameter = isinstance(tensor, torch.nn.Parameter)
    return (_rebuild, (path, timeout, bool(tensor.requires_grad), parameter))


def register_reducer(directory: Optional[str] = None, timeout: float = 60.0,
                     transport: str = "fd") -> None:
    """Sends CUDA tensors (and `nn.Parameter`s) through `torch.multiprocessing` with cuda-ipc.

    `directory`: where shares are published (both processes must see it: in Kubernetes, a
    volume both pods mount); `timeout`: how long a share waits for its receiver; `transport`:
    "fd" (works across PID namespaces) or "legacy". Call it in the sending process; the
    receiving process only needs `cuda_ipc` importable. Calling it again changes the settings.
    """
    global _registered, _torch_reduce_tensor
    import torch
    from torch.multiprocessing import reductions
    from multiprocessing.reduction import ForkingPickler

    with _lock:
        _settings.update(directory=directory, timeout=timeout, transport=transport)
        if _registered:
            return
        _torch_reduce_tensor = reductions.reduce_tensor
        ForkingPickler.register(torch.Tensor, _reduce_tensor)
        ForkingPickler.register(torch.nn.parameter.Parameter, _reduce_tensor)
        _registered = True
