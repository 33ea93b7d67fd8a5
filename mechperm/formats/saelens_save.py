"""Write an SAE as a SAELens ≥ 6 folder (``cfg.json`` + ``sae_weights.safetensors``), atomically.

The folder is what sae-lens' ``SAE.save_model`` writes, and ``sae_lens.SAE.load_from_disk`` reads
it back (checked against sae-lens 6.54, ``saes/sae.py`` and ``loading/pretrained_sae_loaders.py``):

- ``cfg.json`` is ``SAEConfig.to_dict()``: ``d_in``, ``d_sae``, ``dtype`` (``"float32"``,
  ``"float64"``, ``"float16"``, ``"bfloat16"``: sae-lens' ``DTYPE_TO_STR``), ``device``,
  ``apply_b_dec_to_input``, ``normalize_activations`` (``"none"``), ``reshape_activations``
  (``"none"``), ``metadata``; TopK adds ``k`` and ``rescale_acts_by_decoder_norm`` (False: our
  TopK SAEs select on raw activations); ``architecture`` is ``"jumprelu"``, ``"standard"`` or
  ``"topk"``.
- ``metadata`` must carry a ``sae_lens_version`` ≥ 6: without one, ``handle_config_defaulting``
  rewrites the cfg as a pre-6.0 flat cfg. We write the installed sae-lens version, else
  ``"6.0.0"``. ``model_name``, ``hook_name``, ``neuronpedia_id`` and ``hook_layer`` are written
  when :class:`~mechperm.sae.SAEInfo` knows them (``SAEMetadata`` accepts any key).
- ``sae_weights.safetensors`` holds exactly the module's state dict (``load_state_dict`` is
  strict): ``W_enc [d, F]``, ``W_dec [F, d]``, ``b_enc [F]``, ``b_dec [d]``, and ``threshold [F]``
  for JumpReLU, in the SAE's own dtype (bit-exact).

Atomicity: the files are written into a fresh hidden sibling folder, flushed to disk, and the
folder is renamed into place (``os.replace``), so ``folder`` never holds a half-written SAE. With
``overwrite=True`` the old folder is first renamed aside and removed after the new one is in
place; a process killed between those two renames leaves no ``folder`` and the old SAE in a
``.{name}.old-*`` sibling, never a mix of old and new files.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mechperm.sae import SAE

__all__ = ["save_saelens", "saelens_cfg", "CFG", "WEIGHTS"]

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
# Files an SAELens folder may hold (SPARSITY_FILENAME in sae_lens.constants) plus the
# permutation record mechperm.export writes: overwrite=True replaces only folders holding these.
_OWNED = frozenset({CFG, WEIGHTS, "sparsity.safetensors", "permutation.json"})
_ARCHITECTURE = {"jumprelu": "jumprelu", "relu": "standard", "topk": "topk"}
_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def _sae_lens_version() -> str:
    """The installed sae-lens version (≥ 6), else "6.0.0": only its major version matters."""
    try:
        version = _metadata.version("sae-lens")
    except _metadata.PackageNotFoundError:
        return "6.0.0"
    major = version.split(".", 1)[0]
    return version if major.isdigit() and int(major) >= 6 else "6.0.0"


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The ``cfg.json`` dict sae-lens ≥ 6 writes for an SAE like ``sae`` (key order as ``to_dict``)."""
    if sae.dtype not in _DTYPE_NAMES:
        raise ValueError(
            f"SAE{_where(sae)} has dtype {sae.dtype}; sae-lens stores only {sorted(_DTYPE_NAMES.values())}"
            f" — convert it first with sae.to(dtype=torch.float32)"
        )
    version = _sae_lens_version()
    meta: dict[str, Any] = {"sae_lens_version": version, "sae_lens_training_version": version}
    info = sae.info
    for key in ("model_name", "hook_name", "neuronpedia_id"):
        value = getattr(info, key)
        if value is not None:
            meta[key] = value
    if info.layer is not None:
        meta["hook_layer"] = int(info.layer)
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": _DTYPE_NAMES[sae.dtype],
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if sae.activation == "topk":
        cfg["k"] = int(sae.k)  # type: ignore[arg-type]
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["architecture"] = _ARCHITECTURE[sae.activation]
    return cfg


def _where(sae: SAE) -> str:
    return f" ({sae.info.source})" if sae.info.source else ""


def _state_dict(sae: SAE) -> dict[str, torch.Tensor]:
    names = ("W_enc", "W_dec", "b_enc", "b_dec") + (("threshold",) if sae.activation == "jumprelu" else ())
    # safetensors needs contiguous CPU tensors; .cpu() / .contiguous() return the tensor itself
    # when it already is one, so a CPU SAE is written without a copy.
    return {name: getattr(sae, name).detach().cpu().contiguous() for name in names}


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; folders cannot be opened for this on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(file: Path, obj: Any) -> None:
    """``json.dump`` then fsync (the caller renames the folder or file into place)."""
    with open(file, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def check_replaceable(folder: Path, overwrite: bool) -> None:
    """Raise FileExistsError unless ``folder`` is absent, or ``overwrite`` and it holds only SAE files."""
    if not (folder.exists() or folder.is_symlink()):
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another path")
    if not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite=True to replace it")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in _OWNED)
    if foreign:
        raise FileExistsError(
            f"{folder} holds files an SAE folder does not ({foreign[:8]}); refusing to replace it "
            f"even with overwrite=True — remove them or choose another folder"
        )


def replace_folder(folder: Path, write: Callable[[Path], None], *, overwrite: bool) -> Path:
    """Write a folder's files with ``write(tmp)`` into a sibling temp folder, then rename it to ``folder``.

    See the module docstring for what a killed process can leave behind.
    """
    folder = Path(os.path.abspath(folder))
    check_replaceable(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = folder.parent / f".{folder.name}.tmp-{token}"
    tmp.mkdir()  # plain mkdir (not mkdtemp) so the folder gets the umask's permissions
    try:
        write(tmp)
        _fsync(tmp)
        if folder.exists() or folder.is_symlink():
            check_replaceable(folder, overwrite)  # it may have appeared while we wrote
            old = folder.parent / f".{folder.name}.old-{token}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        _fsync(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_saelens_files(sae: SAE, tmp: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``cfg.json``, ``sae_weights.safetensors`` and ``extra`` JSON files into ``tmp``."""
    cfg = saelens_cfg(sae)
    save_file(_state_dict(sae), str(tmp / WEIGHTS), metadata={"format": "pt"})
    _fsync(tmp / WEIGHTS)
    write_json(tmp / CFG, cfg)
    for name, obj in (extra or {}).items():
        write_json(tmp / name, obj)


def save_saelens(sae: SAE, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``sae`` as a SAELens ≥ 6 folder that ``sae_lens.SAE.load_from_disk`` reads.

    Parameters
    ----------
    sae : SAE
        Any mechperm SAE: JumpReLU → ``"jumprelu"``, ReLU → ``"standard"``, TopK → ``"topk"``.
        Tensors ``W_enc [d, F]``, ``W_dec [F, d]``, ``b_enc [F]``, ``b_dec [d]`` (+ ``threshold [F]``)
        are written in the SAE's dtype, bit for bit. The ``invalid`` mask of a folded SAE is
        not saved (the folded weights are, and compute the same function).
    folder : str or Path
        The SAE folder to create; its parents are created as needed.
    overwrite : bool
        Replace an existing folder. Only a folder holding nothing but SAELens files
        (``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``,
        ``permutation.json``) is replaced; anything else is refused.

    Returns
    -------
    Path
        The absolute path of the folder written.

    Raises
    ------
    FileExistsError
        ``folder`` exists and ``overwrite`` is False, or it holds other files.
    ValueError
        The SAE's dtype has no sae-lens name (float32/float64/float16/bfloat16 only).
    """
    saelens_cfg(sae)  # validate before touching the disk
    return replace_folder(Path(folder), lambda tmp: write_saelens_files(sae, tmp), overwrite=overwrite)
