"""What the package does without a GPU: typed errors, the descriptor's layout checks, error
mapping, argument checks. Runs in CI (the real libcuda from Debian, no GPU: NoDevice)."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import cuda_ipc
from cuda_ipc import _native

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_crate_error_variant_has_its_own_class():
    # The crate's variant names, read from its source (Error::variant_name).
    source = (ROOT / "src" / "error.rs").read_text()
    body = source[source.index("pub fn variant_name"):]
    body = body[: body.index("\n    }\n")]
    rust = re.findall(r'=> "(\w+)"', body)
    assert len(rust) > 20, rust
    assert _native.error_variants() == rust
    for name in rust:
        cls = getattr(cuda_ipc, name)
        assert issubclass(cls, cuda_ipc.CudaIpcError), name
        assert cls.__name__ == name and cls.__module__ == "cuda_ipc"
    # Python's own exceptions still catch the matching ones.
    assert issubclass(cuda_ipc.Timeout, TimeoutError)
    assert issubclass(cuda_ipc.InvalidArgument, ValueError)
    assert issubclass(cuda_ipc.Io, OSError)
    assert issubclass(cuda_ipc.DriverNotFound, ImportError)
    assert not issubclass(cuda_ipc.PublisherGone, OSError)


def test_without_a_driver_library_the_error_is_driver_not_found(tmp_path):
    env = dict(os.environ, LD_LIBRARY_PATH="")
    code = textwrap.dedent("""
        import cuda_ipc
        try:
            cuda_ipc.empty((4,), "float32")
        except cuda_ipc.DriverNotFound as e:
            assert e.variant == "DriverNotFound" and isinstance(e, ImportError)
            print("OK", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    if "OK" not in out.stdout and os.path.exists("/usr/lib/x86_64-linux-gnu/libcuda.so.1"):
        pytest.fail(f"this machine has a system libcuda; the test needs one without: {out}")
    assert out.returncode == 0, out.stderr
    assert "OK the NVIDIA driver library could not be loaded" in out.stdout, out.stdout


def test_without_a_gpu_the_error_is_no_device_with_the_crates_message():
    with pytest.raises(cuda_ipc.NoDevice) as info:
        cuda_ipc.empty((16, 16), "float32")
    e = info.value
    assert e.variant == "NoDevice"
    assert "no CUDA device is visible to this process" in str(e)
    with pytest.raises(cuda_ipc.NoDevice):
        cuda_ipc.Publisher("/tmp/cuda-ipc-test-no-gpu/ch", (16,), "float32")


def test_descriptor_carries_dtype_shape_and_strides():
    assert _native.descriptor_round_trip([4, 5], "bfloat16", 40) == ("bfloat16", [4, 5], [5, 1])
    assert _native.descriptor_round_trip([], "float64", 8) == ("float64", [], [])
    assert _native.descriptor_round_trip([2, 3, 4, 5, 6, 7, 8, 9], "uint8", 362880)[1][-1] == 9


def test_descriptor_refuses_a_tensor_larger_than_its_bytes_and_any_corruption():
    with pytest.raises(cuda_ipc.Descriptor, match="spans 84 bytes, the buffer has 80"):
        _native.descriptor_round_trip([3, 7], "float32", 80)
    for offset in (12, 100, 215, 216, 300, 343):
        with pytest.raises(cuda_ipc.Descriptor, match="checksum mismatch"):
            _native.descriptor_round_trip([4, 4], "float32", 64, corrupt=offset)
    with pytest.raises(cuda_ipc.InvalidArgument, match="past the descriptor"):
        _native.descriptor_round_trip([4, 4], "float32", 64, corrupt=10_000)


@pytest.mark.parametrize("shape,dtype,why", [
    ([1] * 9, "float32", "at most 8"),
    ([4], "float7", "unknown dtype"),
    ([1 << 40, 1 << 40], "float32", "more"),
])
def test_bad_layouts_are_value_errors_naming_the_problem(shape, dtype, why):
    with pytest.raises(ValueError, match=why):
        _native.layout(shape, dtype)


def test_layouts_and_dtype_names():
    assert _native.layout([2, 3], "float16") == ([2, 3], [3, 1], 12)
    assert _native.layout([3, 2], "int32", [1, 3]) == ([3, 2], [1, 3], 24)
    torch_like = type("dtype", (), {"__str__": lambda self: "torch.bfloat16"})()
    assert cuda_ipc._dtype_name(torch_like) == "bfloat16"
    assert cuda_ipc._dtype_name("half") == "float16"


def test_open_times_out_naming_the_path(tmp_path):
    with pytest.raises(cuda_ipc.Timeout, match=r"waiting for buffer \"w\" to appear"):
        cuda_ipc.open(tmp_path / "w", timeout=0.2)


def test_open_of_a_corrupt_descriptor_is_a_descriptor_error_without_touching_a_gpu(tmp_path):
    d = tmp_path / "shared"
    d.mkdir(mode=0o700)
    (d / "w.desc").write_bytes(b"CUDAIPC\0" + b"\x02\x00\x00\x00" + b"\x00" * 340)
    with pytest.raises(cuda_ipc.Descriptor, match="checksum"):
        cuda_ipc.open(d / "w", timeout=1.0)
    (d / "w.desc").write_bytes(b"not a descriptor")
    with pytest.raises(cuda_ipc.Descriptor, match="not a cuda-ipc descriptor"):
        cuda_ipc.open(d / "w", timeout=1.0)


def test_open_refuses_a_world_writable_directory(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(cuda_ipc.UnsafeDirectory):
        cuda_ipc.open(d / "w", timeout=0.5)


def test_bad_arguments_are_invalid_argument():
    with pytest.raises(cuda_ipc.InvalidArgument, match="transport"):
        cuda_ipc.empty((4,), "float32", transport="carrier-pigeon")
    with pytest.raises(cuda_ipc.InvalidArgument, match="seconds"):
        cuda_ipc.open("/tmp/x/y", timeout=-1.0)
    with pytest.raises(cuda_ipc.InvalidArgument, match="seconds"):
        cuda_ipc.open("/tmp/x/y", timeout=float("nan"))
    with pytest.raises(cuda_ipc.InvalidArgument, match="policy"):
        cuda_ipc.Publisher("/tmp/x/ch", (4,), policy="sometimes")
    with pytest.raises(OverflowError):
        cuda_ipc.empty((-1,), "float32")


def test_share_refuses_what_is_not_a_cuda_tensor():
    with pytest.raises(TypeError, match="cannot share list"):
        cuda_ipc.share([1, 2, 3], "/tmp/cuda-ipc-test/x")


def test_stream_handles():
    assert cuda_ipc._stream_handle(7, 0) == 7
    assert cuda_ipc._stream_handle(type("S", (), {"cuda_stream": 42})(), 0) == 42
    assert cuda_ipc._stream_handle(type("S", (), {"ptr": 43})(), 0) == 43
    with pytest.raises(TypeError, match="not a CUDA stream"):
        cuda_ipc._stream_handle("stream", 0)


def test_the_stubs_name_every_native_class_and_function():
    stub = (pathlib.Path(cuda_ipc.__file__).parent / "_native.pyi").read_text()
    for name in dir(_native):
        if name.startswith("_") and name != "__version__":
            continue
        assert re.search(rf"^(class|def) {name}\b|^{name}:", stub, re.M), name


def test_dtype_names_from_types_and_objects():
    import numpy
    assert cuda_ipc._dtype_name(float) == "float64"
    assert cuda_ipc._dtype_name(bool) == "bool"
    assert cuda_ipc._dtype_name(numpy.float32) == "float32"
    assert cuda_ipc._dtype_name(numpy.dtype("int16")) == "int16"
    with pytest.raises(TypeError, match="not a CUDA stream"):
        cuda_ipc._stream_handle(True, 0)
    with pytest.raises(TypeError, match="handle"):
        cuda_ipc._stream_handle(-3, 0)
