"""cuda-ipc: share CUDA tensors and GPU channels between processes and Kubernetes pods.

The Python face of the `cuda-ipc` Rust crate (the one implementation): the same typed,
checked descriptors, leases and deferred frees, the fd transport that works in pods without
hostPID, and the channels.

Share a tensor (producer)::

    import torch, cuda_ipc
    weights = cuda_ipc.empty((4096, 4096), torch.float16, device=0)   # shared memory
    weights.torch().normal_()                                          # fill it in place
    export = cuda_ipc.share(weights, "/run/cuda-ipc/weights")          # no copy
    export.wait_consumers(1, timeout=60)

Map it (consumer, another process or pod)::

    w = cuda_ipc.open("/run/cuda-ipc/weights", timeout=60).torch()    # zero-copy tensor

`share` also takes any CUDA tensor or CuPy array; memory from PyTorch's or CuPy's allocator is
not exportable, so it is copied once into shared memory and a `CopyWarning` says so.

Channels::

    pub = cuda_ipc.Publisher("/run/cuda-ipc/frames", (1080, 1920, 4), "uint8")
    with pub.loan() as frame:              # published on the current stream at the end
        frame.torch().copy_(image)

    sub = cuda_ipc.Subscriber("/run/cuda-ipc/frames", (1080, 1920, 4), "uint8")
    for sample in sub:                     # ends when the publisher closes the channel
        with sample:                       # released at the end of the block
            model(sample.torch())

Errors are `CudaIpcError` subclasses named after the crate's variants (`Timeout`,
`PublisherGone`, `UntrustedExporter`, ...), with the crate's messages.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

from . import _native
from ._native import (  # noqa: F401  (re-exported)
    SharedArray,
    CudaIpcError,
    __version__,
    driver_version,
    device_count,
)

# One exception class per crate error variant, e.g. cuda_ipc.Timeout, cuda_ipc.PublisherGone.
for _name in _native.error_variants():
    globals()[_name] = getattr(_native, _name)
del _name

__all__ = [
    "SharedArray", "Export", "Publisher", "Loan", "Subscriber", "Sample", "CudaIpcError",
    "CopyWarning", "empty", "share", "open", "driver_version", "device_count",
] + list(_native.error_variants())


class CopyWarning(UserWarning):
    """`share` copied a tensor into shared memory (its allocator's memory is not exportable)."""


def _dtype_name(dtype: Any) -> str:
    """'float32' from 'float32', torch.float32, numpy/cupy dtypes and scalar types (np.float32,
    float, int, bool)."""
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, type):
        builtin = {float: "float64", int: "int64", bool: "bool", complex: "complex128"}
        if dtype in builtin:
            return builtin[dtype]
        numpy = sys.modules.get("numpy")
        try:
            name = numpy.dtype(dtype).name if numpy is not None else dtype.__name__
        except TypeError:
            name = dtype.__name__
    else:
        name = getattr(dtype, "name", None) or str(dtype)
        if not isinstance(name, str):
            name = str(dtype)
    name = name.replace("torch.", "")
    aliases = {"half": "float16", "float": "float32", "double": "float64", "long": "int64",
               "int": "int32", "short": "int16", "bool_": "bool", "cfloat": "complex64",
               "cdouble": "complex128"}
    return aliases.get(name, name)


def _stream(stream: Any, device: int) -> Tuple[int, Any]:
    """(raw CUstream handle, the object owning it) from None (the current PyTorch stream if
    PyTorch is loaded, else CuPy's, else the legacy default stream), an int, a
    torch.cuda.Stream or a cupy Stream. The object is kept while the stream is in use."""
    if stream is None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            current = torch.cuda.current_stream(device)
            return int(current.cuda_stream), current
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            with cupy.cuda.Device(device):
                current = cupy.cuda.get_current_stream()
            return int(current.ptr), current
        return 0, None
    if isinstance(stream, bool):
        raise TypeError(f"not a CUDA stream: {stream!r}")
    if isinstance(stream, int):
        if stream < 0:
            raise TypeError(f"not a CUDA stream handle: {stream}")
        return stream, None
    for attr in ("cuda_stream", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value, stream
    raise TypeError(f"not a CUDA stream: {stream!r} (give a torch.cuda.Stream, a cupy Stream "
                    "or a raw handle)")


def _stream_handle(stream: Any, device: int) -> int:
    """The raw CUstream handle of `stream` (see `_stream`)."""
    return _stream(stream, device)[0]


def _synchronize(device: int) -> None:
    """Waits for PyTorch's and CuPy's work on `device` (so what is shared is complete)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.cuda.Device(device).synchronize()


# Arrays allocated here, by (device, address): a tensor made from one is shared without a copy.
_owned: "weakref.WeakValueDictionary[Tuple[int, int], SharedArray]" = weakref.WeakValueDictionary()


def empty(shape: Union[int, Sequence[int]], dtype: Any = "float32", *, device: int = 0,
          transport: str = "auto") -> SharedArray:
    """Allocates zeroed, exportable GPU memory for a tensor of `shape` and `dtype` on `device`.

    Fill it in place (``arr.torch().copy_(x)``, ``arr.cupy()[...] = x``) and `share` it without a
    copy. `transport`: "fd" (a VMM allocation passed as a file descriptor: works across PID
    namespaces, i.e. between pods without hostPID), "legacy" (a cuIpc handle in a file) or
    "auto" (fd where the GPU supports it).
    """
    if isinstance(shape, int):
        shape = (shape,)
    arr = _native.empty(list(shape), _dtype_name(dtype), device=device, transport=transport)
    _owned[(arr.device, arr.data_ptr)] = arr
    return arr


def _describe(obj: Any) -> Tuple[Tuple[int, ...], str, int]:
    """(shape, dtype name, device) of a CUDA tensor or CuPy array."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        if not obj.is_cuda:
            raise TypeError(f"a CPU tensor cannot be shared: move it to a GPU first ({obj.device})")
        return tuple(obj.shape), _dtype_name(obj.dtype), obj.device.index
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(obj, cupy.ndarray):
        return tuple(obj.shape), _dtype_name(obj.dtype), obj.device.id
    raise TypeError(f"cannot share {type(obj).__name__}: give a CUDA torch.Tensor, a cupy.ndarray "
                    "or a cuda_ipc.SharedArray")


def _owned_array_of(obj: Any) -> Optional[SharedArray]:
    """The SharedArray `obj` is (or views exactly, same layout), if this process allocated it."""
    if isinstance(obj, SharedArray):
        return obj if obj.is_owner else None
    try:
        shape, dtype, device = _describe(obj)
    except TypeError:
        return None
    ptr = obj.data_ptr() if hasattr(obj, "data_ptr") else obj.data.ptr
    arr = _owned.get((device, ptr))
    if arr is None or tuple(arr.shape) != shape or arr.dtype != dtype:
        return None
    strides = tuple(obj.stride()) if hasattr(obj, "stride") else tuple(
        s // obj.itemsize for s in obj.strides)
    return arr if strides == tuple(arr.strides) or len(shape) == 0 else None


def _copy_into(arr: SharedArray, obj: Any) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        arr.torch().copy_(obj)
    else:
        arr.cupy()[...] = obj


class Export:
    """A tensor published under a path (from `share`): `<path>.desc` and, for the fd
    transport, the socket `<path>.sock`. Close it (or leave the `with` block) to stop
    publishing; consumers holding it keep the memory alive until they drop it."""

    def __init__(self, native: "_native.Exporter", copied: bool):
        self._native = native
        #: True when `share` copied the tensor into shared memory.
        self.copied = copied

    @property
    def array(self) -> SharedArray:
        """The shared memory."""
        return self._native.array

    @property
    def path(self) -> str:
        return str(self._native.path)

    def stats(self) -> dict:
        """active_leases, total_leases, refused_uid, dropped_bad, dropped_full."""
        return self._native.stats()

    def wait_consumers(self, n: int, timeout: float = 30.0) -> int:
        """Waits until `n` consumers hold the tensor (raises `Timeout`)."""
        return self._native.wait_consumers(n, timeout)

    def wait_released(self, timeout: float = 30.0) -> int:
        """Waits until every expected consumer has come and gone (raises `Timeout`)."""
        return self._native.wait_released(timeout)

    def notify_ready(self, version: int) -> None:
        """Tells every consumer holding the tensor that `version` is ready."""
        self._native.notify_ready(version)

    def close(self) -> None:
        self._native.close()

    def __enter__(self) -> "Export":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Export({self.path}, {self.array!r}, copied={self.copied})"


def share(obj: Any, path: Union[str, os.PathLike], *, transport: str = "auto",
          consumers: int = 1, allowed_uids: Optional[Sequence[int]] = None,
          allowed_group: Optional[int] = None, allow_any: bool = False,
          group: Optional[int] = None, handshake_timeout: float = 5.0) -> Export:
    """Publishes a CUDA tensor's memory at `path` (a directory the consumers can see, plus a
    name): a `SharedArray` from `empty` (or a tensor made from one) without a copy; any other
    CUDA tensor or CuPy array by copying it once into shared memory (with a `CopyWarning`).

    The tensor's queued work (PyTorch's, CuPy's) is waited for first. Consumers must run as
    this uid unless `allowed_uids`/`allowed_group`/`allow_any` say otherwise; `group` shares
    through a group-owned directory (see the crate's README, "Threat model").
    """
    arr = _owned_array_of(obj)
    copied = arr is None
    if copied and isinstance(obj, SharedArray):
        # Imported or a channel's frame: shared again as a copy, through a framework.
        torch = sys.modules.get("torch")
        obj = obj.torch() if torch is not None else obj.cupy()
    if copied:
        shape, dtype, device = _describe(obj)
        arr = empty(shape, dtype, device=device, transport=transport)
        _copy_into(arr, obj)
        warnings.warn(CopyWarning(
            f"cuda_ipc.share copied {arr.nbytes} bytes of a {dtype}{list(shape)} tensor into "
            "shared memory (memory of PyTorch's or CuPy's allocator cannot be exported): "
            "allocate it with cuda_ipc.empty(...) to share it without a copy"), stacklevel=2)
    _synchronize(arr.device)
    native = _native.Exporter(
        arr, os.fspath(path), consumers=consumers,
        allowed_uids=list(allowed_uids) if allowed_uids is not None else None,
        allowed_group=allowed_group, allow_any=allow_any, group=group,
        handshake_timeout=handshake_timeout)
    return Export(native, copied)


def open(path: Union[str, os.PathLike], *, timeout: float = 30.0, device: Optional[int] = None,
         dtype: Any = None, shape: Optional[Sequence[int]] = None,
         trusted_uids: Sequence[int] = (), group: Optional[int] = None) -> SharedArray:
    """Maps the tensor published at `path` (waiting up to `timeout` seconds for it), on
    `device` (default: the exporter's GPU), and returns it as a `SharedArray`: `.torch()` and
    `.cupy()` view it without a copy. `dtype` and `shape`, when given, are checked against the
    descriptor (`Descriptor` error on a mismatch). The exporter must run as this uid, root, or
    one of `trusted_uids`."""
    return _native.open(
        os.fspath(path), timeout=timeout, device=device,
        dtype=_dtype_name(dtype) if dtype is not None else None,
        shape=list(shape) if shape is not None else None,
        trusted_uids=list(trusted_uids), group=group)


class _Slot:
    """What a loan and a received sample have: the frame's number and its slot, as a
    `SharedArray` or (no copy) a PyTorch tensor or CuPy array."""

    _native: Any

    @property
    def seq(self) -> int:
        return self._native.seq

    @property
    def array(self) -> SharedArray:
        return self._native.array

    def torch(self):
        """The slot as a PyTorch tensor (no copy)."""
        return self._native.array.torch()

    def cupy(self):
        """The slot as a CuPy array (no copy)."""
        return self._native.array.cupy()


class Loan(_Slot):
    """A frame's slot lent by `Publisher.loan`: fill `array` (or `torch()`), then `publish`.
    As a context manager it publishes on the current stream when the block ends normally and
    gives the slot back unpublished when it raises."""

    def __init__(self, native: "_native.Loan", device: int):
        self._native = native
        self._device = device

    def publish(self, stream: Any = None) -> int:
        """Publishes after the work queued on `stream` (default: the current PyTorch stream)."""
        return self._native.publish(_stream_handle(stream, self._device))

    def abandon(self) -> None:
        """Gives the slot back unpublished."""
        self._native.abandon()

    def _native_held(self) -> bool:
        try:
            self._native.array
            return True
        except CudaIpcError:
            return False

    def __enter__(self) -> "Loan":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.abandon()


class _ChannelEnd:
    """What both ends of a channel have: the frames' shape and dtype, the path, and `close()`
    at the end of a `with` block."""

    _native: Any

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._native.shape

    @property
    def dtype(self) -> str:
        return self._native.dtype

    @property
    def path(self) -> str:
        return str(self._native.path)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Publisher(_ChannelEnd):
    """The sending end of a channel of GPU frames of one `shape` and `dtype`.

    `policy`: "block" (wait for every subscriber to release the oldest frame) or
    "drop-oldest". Subscribers must run as this uid unless `allowed_uids`/`allowed_group`
    say otherwise."""

    def __init__(self, path: Union[str, os.PathLike], shape: Union[int, Sequence[int]],
                 dtype: Any = "uint8", *, device: int = 0, slots: int = 8,
                 max_subscribers: int = 16, max_held: int = 2, policy: str = "block",
                 transport: str = "auto", allowed_uids: Optional[Sequence[int]] = None,
                 allowed_group: Optional[int] = None, group: Optional[int] = None):
        if isinstance(shape, int):
            shape = (shape,)
        self.device = device
        self._native = _native.Publisher(
            os.fspath(path), list(shape), _dtype_name(dtype), device=device, slots=slots,
            max_subscribers=max_subscribers, max_held=max_held, policy=policy,
            transport=transport,
            allowed_uids=list(allowed_uids) if allowed_uids is not None else None,
            allowed_group=allowed_group, group=group)

    def loan(self, timeout: float = 30.0) -> Loan:
        """The next frame's slot (waits up to `timeout` seconds for a free one)."""
        return Loan(self._native.loan(timeout), self.device)

    def publish(self, tensor: Any, timeout: float = 30.0, stream: Any = None) -> int:
        """Copies `tensor` into the next slot on `stream` (default: the current stream) and
        publishes it there: returns its number."""
        loan = self.loan(timeout)
        try:
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(tensor, torch.Tensor):
                s = stream if stream is not None else torch.cuda.current_stream(self.device)
                if isinstance(s, int):
                    s = torch.cuda.ExternalStream(s, device=self.device)
                with torch.cuda.stream(s):
                    loan.torch().copy_(tensor.reshape(loan.array.shape))
                    return loan.publish(s)
            import cupy
            s = stream if stream is not None else cupy.cuda.get_current_stream()
            if isinstance(s, int):
                s = cupy.cuda.ExternalStream(s)
            with s:
                loan.cupy()[...] = tensor
                return loan.publish(s)
        finally:
            if loan._native_held():
                loan.abandon()

    @property
    def subscribers(self) -> int:
        return self._native.subscribers

    def wait_subscribers(self, n: int, timeout: float = 30.0) -> int:
        return self._native.wait_subscribers(n, timeout)

    def stats(self) -> dict:
        """published, subscribers, joined, left, refused, same_gpu_without_mps, same_gpu_mps."""
        return self._native.stats()

    def close(self) -> None:
        """Closes the channel now: subscribers get `PublisherGone` (closed=True) after the last
        frame; an unpublished loan is abandoned. The slots' memory stays mapped while a tensor
        of a loaned slot still exists."""
        self._native.close()


class Sample(_Slot):
    """A received frame, read-only. Use it while held; it is released by `release()`, at the
    end of its `with` block, or when collected. A tensor made from it must not be used after
    the release (its slot is reused): `.clone()` it to keep it."""

    def __init__(self, native: "_native.Sample", device: int):
        self._native = native
        self._device = device

    @property
    def missed(self) -> int:
        return self._native.missed

    @property
    def held(self) -> bool:
        return self._native.held

    def release(self, stream: Any = None) -> None:
        """Releases the frame after the work queued on `stream` (default: the current PyTorch
        stream)."""
        self._native.release(_stream_handle(stream, self._device))

    def __enter__(self) -> "Sample":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._native.held:
            self.release()


class Subscriber(_ChannelEnd):
    """The receiving end of a channel: frames must be of `shape` and `dtype` (checked when
    joining). Iterating yields samples until the publisher closes the channel; a publisher
    that dies raises `PublisherGone`."""

    def __init__(self, path: Union[str, os.PathLike], shape: Union[int, Sequence[int]],
                 dtype: Any = "uint8", *, device: int = 0, timeout: float = 30.0,
                 start: str = "latest", trusted_uids: Sequence[int] = (),
                 group: Optional[int] = None):
        if isinstance(shape, int):
            shape = (shape,)
        self.device = device
        self.timeout = timeout
        self._native = _native.Subscriber(
            os.fspath(path), list(shape), _dtype_name(dtype), device=device, timeout=timeout,
            start=start, trusted_uids=list(trusted_uids), group=group)

    def receive(self, timeout: Optional[float] = None, stream: Any = None) -> Sample:
        """The next frame, with its GPU-side wait queued on `stream` (default: the current
        PyTorch stream): work queued there after this call sees the frame."""
        t = self.timeout if timeout is None else timeout
        handle, owner = _stream(stream, self.device)
        return Sample(self._native.receive(handle, t, owner), self.device)

    def receive_host(self, timeout: Optional[float] = None) -> Sample:
        """The next frame, waited for on the CPU (no stream involved)."""
        t = self.timeout if timeout is None else timeout
        return Sample(self._native.receive_host(t), self.device)

    def __iter__(self) -> Iterator[Sample]:
        while True:
            try:
                yield self.receive()
            except PublisherGone as gone:  # noqa: F821  (defined above from the variants)
                if getattr(gone, "closed", False):
                    return
                raise

    def stats(self) -> dict:
        """received, missed, held, sharing ("SameGpuMps", "SameGpuWithoutMps", "OtherGpu",
        "Unknown")."""
        return self._native.stats()

    def close(self) -> None:
        """Leaves the channel (after every sample still held is released)."""
        self._native.close()
