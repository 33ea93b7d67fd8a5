"""File writers shared by the format tests (no tests here): tiny SAEs in each on-disk layout."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
D, F = 8, 24


def sae_arrays(d: int = 8, F: int = 24, seed: int = 0, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Gemma-Scope-like tensors: unit-norm decoder rows, positive thresholds."""
    rng = np.random.default_rng(seed)
    W_dec = rng.standard_normal((F, d))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    return {
        "W_enc": (W_dec.T * rng.uniform(1, 2, F)).astype(dtype),
        "W_dec": W_dec.astype(dtype),
        "b_enc": (0.1 * rng.standard_normal(F)).astype(dtype),
        "b_dec": (0.1 * rng.standard_normal(d)).astype(dtype),
        "threshold": rng.uniform(0.05, 1.0, F).astype(dtype),
    }


def write_npz(folder: Path, arrays: dict[str, np.ndarray] | None = None, **kw: object) -> Path:
    """``folder/params.npz`` written with ``np.savez``, as Gemma Scope ships it."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = sae_arrays(**kw) if arrays is None else arrays  # type: ignore[arg-type]
    np.savez(folder / "params.npz", **arrays)
    return folder / "params.npz"


def assert_same(sae: object, arrays: dict[str, np.ndarray]) -> None:
    """Every tensor of ``sae`` equals the array written, bit for bit."""
    for name, arr in arrays.items():
        got = getattr(sae, name)
        assert got is not None, name
        assert torch.equal(got, torch.from_numpy(arr)), name


def write_gemma_repo(root: Path, layers: dict[int, dict[str, list[int]]], d: int = 8, F: int = 24) -> dict:
    """``root/layer_L/width_W/average_l0_N/params.npz`` for ``layers = {L: {W: [N, ...]}}``.

    Returns ``{(L, W, N): arrays}``; every SAE gets different values.
    """
    written = {}
    for L, widths in layers.items():
        for W, l0s in widths.items():
            for N in l0s:
                arrays = sae_arrays(d, F, seed=1000 * L + N)
                write_npz(root / f"layer_{L}" / f"width_{W}" / f"average_l0_{N}", arrays)
                written[(L, W, N)] = arrays
    return written


def write_saelens(
    folder: Path,
    cfg: dict,
    arrays: dict[str, np.ndarray] | None = None,
    *,
    drop: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """``cfg.json`` + ``sae_weights.safetensors`` written by hand (not by sae_lens)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    arrays = dict(sae_arrays(cfg.get("d_in", 8), cfg.get("d_sae", 24)) if arrays is None else arrays)
    for name in drop:
        arrays.pop(name)
    # safetensors.numpy writes a Fortran-ordered array's raw buffer as if it were C-ordered.
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return arrays


def hf_cache_repo(hub: Path, repo_id: str, source: Path, rev: str, *, main: bool = True) -> Path:
    """Copy the tree under ``source`` into a hub cache the way huggingface_hub lays it out.

    Files go to ``blobs/<sha256>``; ``snapshots/<rev>/<path>`` holds relative symlinks to them;
    ``refs/main`` names ``rev`` when ``main``. Returns the ``models--ORG--NAME`` folder.
    """
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / rev / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
    return repo


def cfg_v6(architecture: str = "jumprelu", **extra: object) -> dict:
    """A cfg as sae_lens ≥ 6 ``SAEConfig.to_dict`` writes it."""
    return {
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "sae_lens_training_version": "6.54.12",
            "model_name": "gemma-2-2b",
            "hook_name": "blocks.5.hook_resid_post",
            "neuronpedia_id": "gemma-2-2b/5-my-sae",
        },
        "architecture": architecture,
        **extra,
    }


def cfg_pre6(**extra: object) -> dict:
    """A flat cfg as sae_lens 3–5 wrote it (``hook_point`` era keys included)."""
    return {
        "architecture": "standard",
        "d_in": D,
        "d_sae": F,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "context_size": 128,
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "hook_point_head_index": None,
        "prepend_bos": True,
        "dataset_path": "Skylion007/openwebtext",
        "normalize_activations": False,
        "dtype": "torch.float32",
        "device": "cuda",
        "sae_lens_training_version": None,
        "neuronpedia_id": "gpt2-small/8-res-jb",
        **extra,
    }
