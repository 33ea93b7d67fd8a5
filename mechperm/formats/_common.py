"""Helpers every loader shares: dtype/device arguments, one-tensor-at-a-time placement, safetensors
reading, shape checks.

Memory rule (DESIGN: a 1M-feature SAE must load without a second copy): loaders hand each tensor
to :func:`place` as soon as it is read and drop their own reference, so a dtype or device change
holds at most one source tensor and its converted copy at a time.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import safetensors
import torch
from safetensors import safe_open
from torch import Tensor

DTypeLike = torch.dtype | str | None
DeviceLike = torch.device | str | None

_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
    "fp64": torch.float64,
}


def read_json_object(file: Path) -> dict:
    """A config file's JSON object; ValueError naming the file when it is unreadable or not an object."""
    try:
        cfg = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} holds a JSON {type(cfg).__name__}; expected an object of config keys")
    return cfg


def holds_pair(path: Path, cfg: str, weights: str) -> bool:
    """Whether ``path`` (a folder, or one of its two files) is a folder holding ``cfg`` and ``weights``."""
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in (cfg, weights):
        return False
    return (folder / cfg).is_file() and (folder / weights).is_file()


def claims_pair(path: Path, cfg: str, weights: str, accept: Callable[[dict], bool]) -> bool:
    """A sniff: ``path`` holds ``cfg`` and ``weights`` (:func:`holds_pair`) and the config is either
    ``accept``-ed or unreadable (claimed, so that ``load`` names what is wrong with it instead of
    "no format recognises")."""
    if not holds_pair(path, cfg, weights):
        return False
    folder = path if path.is_dir() else path.parent
    try:
        config = read_json_object(folder / cfg)
    except ValueError:
        return True
    return accept(config)


def as_dtype(dtype: DTypeLike) -> torch.dtype | None:
    """``torch.float32``, ``"float32"``, ``"torch.bfloat16"``, ``"bf16"`` ... → a floating torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not a floating dtype; choose one of {sorted(_DTYPE_NAMES)}")
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not understood; choose one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def as_device(device: DeviceLike) -> torch.device:
    """None → CPU; anything else through ``torch.device``, refused with the reason (ValueError)
    where it names no device or one this machine lacks (``"cuda"`` on a CPU-only torch), before
    any work is done rather than as torch's assertion deep inside it."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ({exc}); e.g. 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device={device!r}: CUDA is not available here ({why}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS (Apple GPU) is not available here; use 'cpu'")
    return dev


def place(t: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """Move one tensor to ``device`` / ``dtype``, C-contiguous; ``t`` itself when nothing changes.

    Arrays saved in Fortran order (``np.savez`` keeps the order of a transposed array) load as
    strided views; they are made contiguous here, one tensor at a time, because validation and
    the matching kernels flatten rows (a strided tensor would be copied there, every time).
    """
    return t.to(device=device, dtype=dtype if dtype is not None else t.dtype).contiguous()


def read_safetensors(
    file: Path,
    device: torch.device,
    dtype: torch.dtype | None,
    select: Callable[[Path, list[str]], Mapping[str, str]],
    check: Callable[[Path, str, Tensor], Tensor | None] | None = None,
    *,
    open_on: str = "cpu",
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read the tensors ``select`` picks from ``file``, one at a time, each placed before the next.

    ``select(file, names)`` gets the file's tensor names and returns ``{name to return: name in
    the file}`` in reading order; it warns about or refuses the rest. ``check(file, name, t)`` sees
    each tensor as read (before ``place``) and returns it, a view of it, or None to drop it.
    ``open_on`` is the device ``safe_open`` reads onto. Returns the tensors and ``select``'s map.
    Called from a loader's ``load``, a warning in ``select`` or ``check`` with ``stacklevel=5``
    points at the caller of ``load_sae``.
    Errors name the file, and the tensor as the file names it: one helper, so that every
    safetensors format reports an unreadable or non-floating tensor alike.

    Memory: ``safe_open`` on the CPU maps the file copy-on-write (``torch.UntypedStorage.from_file``,
    ``shared=False``): each ``get_tensor`` is a view of the mapping, paged in as it is touched, so
    nothing is copied unless a dtype or device change asks for it, and a cast replaces one tensor
    before the next is read.
    """
    try:
        handle = safe_open(str(file), framework="pt", device=open_on)
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(
            f"{file} is not a readable safetensors file ({e}); it is truncated or corrupt"
        ) from e
    tensors: dict[str, Tensor] = {}
    with handle as f:
        keys = dict(select(file, list(f.keys())))
        for name, stored in keys.items():
            try:
                t = f.get_tensor(stored)
            except (safetensors.SafetensorError, OSError) as e:
                raise ValueError(f"{stored} in {file} cannot be read ({e}); the file is corrupt") from e
            if not t.is_floating_point():
                raise ValueError(f"{stored} in {file} has dtype {t.dtype}; expected a floating dtype")
            kept = t if check is None else check(file, name, t)
            if kept is not None:
                tensors[name] = place(kept, device, dtype)
    return tensors, keys


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class SafetensorsRows:
    """Row blocks of a safetensors file's 2-D tensors, read with plain file reads.

    For loaders that convert a matrix (scale, transpose) instead of keeping it: reading it through
    a mapping would keep every page of the source resident next to the converted copy (2× the
    tensor at the peak); a block read at a time, the converted copy is the only full-size memory.
    The header is parsed here (8-byte little-endian length, then JSON of ``dtype``, ``shape`` and
    ``data_offsets`` per tensor), so shapes and dtypes are known before anything is read.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 2 <= n <= 100_000_000:
                    raise ValueError(f"header length {n}")
                header = json.loads(f.read(n))
            self._base = 8 + n
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{file} is not a readable safetensors file ({e}); it is truncated or corrupt") from e
        if not isinstance(header, dict):
            raise ValueError(f"{file} is not a readable safetensors file (its header is not an object)")
        self.entries = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self.entries[name].get("dtype")
        if code not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name} in {self.file} has dtype {code}; expected a floating dtype")
        return _SAFETENSORS_DTYPES[code]

    def rows(self, name: str, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
        """Rows ``r0:r1`` of the 2-D tensor ``name``: a CPU tensor of the stored dtype (``out``, a
        contiguous buffer of that shape and dtype, when given: block loops then allocate nothing)."""
        rows, cols = self.shape(name)
        dtype = self.dtype(name)
        item = torch.empty((), dtype=dtype).element_size()
        start, end = (int(x) for x in self.entries[name]["data_offsets"])
        if end - start != rows * cols * item:
            raise ValueError(
                f"{name} in {self.file} holds {end - start} bytes for shape {(rows, cols)}; the file is corrupt"
            )
        out = torch.empty((r1 - r0, cols), dtype=dtype) if out is None else out
        view = out.view(torch.uint8).numpy().reshape(-1)
        with open(self.file, "rb") as f:
            f.seek(self._base + start + r0 * cols * item)
            if f.readinto(memoryview(view)) != view.size:
                raise ValueError(f"{name} in {self.file} is cut short; the file is truncated")
        return out


def _page_releaser() -> Callable[[int, int], None] | None:
    """``madvise(MADV_DONTNEED)`` on Linux (None elsewhere): drop a range of pages we are done with."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page = mmap.PAGESIZE

    def release(address: int, nbytes: int) -> None:
        lo = -(-address // page) * page  # whole pages inside [address, address + nbytes) only:
        hi = (address + nbytes) // page * page  # a neighbour's bytes are never dropped
        if hi > lo:
            madvise(lo, hi - lo, 4)  # MADV_DONTNEED

    return release


_RELEASE = _page_releaser()


def transposed_copy(t: Tensor, device: torch.device, dtype: torch.dtype | None, *, release: bool = True) -> Tensor:
    """``t.T`` (``t`` a 2-D CPU tensor about to be discarded) as a new contiguous tensor, a block of
    rows at a time, each block's source pages released once copied (Linux: ``MADV_DONTNEED``).

    Why: ``t`` is usually a view of a file mapping (``torch.load(mmap=True)``); copied whole, every
    page of the source stays resident next to the copy (2× the tensor at the peak, the memory
    test's bound is 1.5×). Released block by block, the copy is the only full-size memory. The
    pages dropped lie wholly inside rows already copied, and the caller never reads ``t`` again
    (a private mapping would re-read them from the file; anonymous memory would read zeros).
    ``release=False`` for tensors in anonymous memory that another tensor may share (tied
    weights read by a plain ``torch.load``): their pages must stay.
    """
    rows, cols = t.shape
    out = torch.empty((cols, rows), dtype=dtype if dtype is not None else t.dtype, device=device)
    step = max(1, (1 << 22) // max(cols, 1))
    item = t.element_size()
    contiguous = t.is_contiguous() and t.device.type == "cpu"
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        out[:, r0:r1].copy_(t[r0:r1].T)  # converts dtype and device in place: no temporary
        if release and contiguous and _RELEASE is not None:
            _RELEASE(t.data_ptr() + r0 * cols * item, (r1 - r0) * cols * item)
    return out


def read_state_dict(file: Path, what: str) -> tuple[dict[str, Tensor], bool]:
    """A ``torch.save``-d dict of tensors (``what`` names the format in errors), and whether its
    tensors are views of a mapping of the file.

    ``torch.load(weights_only=True)``: no pickled code runs. ``mmap=True`` where the file is in
    torch's zip format (since 1.6), so a tensor that is transposed or cast is the only copy
    (:func:`transposed_copy`); older files are read whole, as torch can only read those.
    """
    mapped = True
    try:
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            state, mapped = torch.load(str(file), map_location="cpu", weights_only=True), False
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"{file} is not a readable torch state dict ({type(e).__name__}: {e}); it is truncated, "
            f"corrupt, or holds pickled objects other than tensors"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a dict of tensors ({what})")
    return state, mapped


def require(
    tensors: Mapping[str, object], names: tuple[str, ...], source: Path, kind: str, hint: str = ""
) -> None:
    """Raise ValueError naming the file and each missing tensor, and listing what the file holds."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(
            f"{source} has no tensor {', '.join(repr(n) for n in missing)}; it holds "
            f"{sorted(tensors)}, and a {kind} file needs {list(names)}{hint}"
        )


def check_shape(name: str, source: Path, got: tuple[int, ...], shape: tuple[int, ...], origin: str,
                letters: str | None = None) -> None:
    """ValueError unless ``got == shape``: the tensor and file, both shapes, where the expected one
    comes from (``origin``), and "is it transposed?" when it is."""
    if got != shape:
        hint = " — is it transposed?" if len(shape) == 2 and got == shape[::-1] else ""
        expected = f"{letters} = {shape}" if letters else f"{shape}"
        raise ValueError(f"{name} in {source} has shape {got}; expected {expected} ({origin}){hint}")


def check_shapes(tensors: Mapping[str, Tensor], source: Path) -> tuple[int, int]:
    """Check the SAELens layout against the biases; return ``(d, F)``.

    ``F`` comes from ``b_enc`` and ``d`` from ``b_dec``, so a transposed ``W_enc`` or ``W_dec``
    is named as such (``SAE.validate`` alone reads d and F from ``W_enc`` and would blame the
    other matrix).
    """
    for name in ("b_enc", "b_dec"):
        if tensors[name].ndim != 1:
            raise ValueError(f"{name} in {source} has shape {tuple(tensors[name].shape)}; expected 1-D")
    F, d = int(tensors["b_enc"].shape[0]), int(tensors["b_dec"].shape[0])
    expected = {"W_enc": ((d, F), "(d, F)"), "W_dec": ((F, d), "(F, d)"), "threshold": ((F,), "(F,)")}
    for name, (shape, letters) in expected.items():
        if name in tensors:
            check_shape(name, source, tuple(tensors[name].shape), shape, f"F={F} from b_enc, d={d} from b_dec", letters)
    return d, F
