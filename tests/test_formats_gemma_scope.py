"""Gemma Scope params.npz: single SAEs, L0/width choice, repo and flat stacks, HF cache trees."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_formats_fixtures import assert_same, hf_cache_repo, sae_arrays, write_gemma_repo, write_npz

from mechperm.formats import L0ChoiceWarning, load_sae, load_stack


# ---------------------------------------------------------------- one SAE
def test_folder_and_file_load_the_same(tmp_path: Path) -> None:
    arrays = sae_arrays(8, 24)
    file = write_npz(tmp_path / "layer_3", arrays)
    for path in (file.parent, file, str(file)):
        sae = load_sae(path)
        assert_same(sae, arrays)
        assert sae.activation == "jumprelu" and not sae.apply_b_dec_to_input
        assert (sae.info.format, sae.info.layer, sae.info.source) == ("gemma_scope", 3, str(file))
        assert sae.info.model_name is None and sae.info.neuronpedia_id is None


@pytest.mark.parametrize("order", ["C", "F"])
def test_tensors_come_back_contiguous(tmp_path: Path, order: str) -> None:
    arrays = {k: np.asarray(v, order=order) for k, v in sae_arrays().items()}
    assert arrays["W_enc"].flags.f_contiguous == (order == "F")
    sae = load_sae(write_npz(tmp_path, arrays))
    assert all(t.is_contiguous() for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, sae.threshold))
    assert_same(sae, arrays)


def test_dtype_cast_and_lowercase_names(tmp_path: Path) -> None:
    arrays = sae_arrays()
    np.savez(tmp_path / "params.npz", **{k.lower() if k.startswith("W") else k: v for k, v in arrays.items()})
    sae = load_sae(tmp_path, dtype=torch.float64)
    assert sae.dtype == torch.float64 and sae.threshold.dtype == torch.float64
    assert torch.equal(sae.W_enc, torch.from_numpy(arrays["W_enc"]).double())


def test_float64_and_big_endian_files(tmp_path: Path) -> None:
    arrays = {k: v.astype(">f8") for k, v in sae_arrays().items()}
    sae = load_sae(write_npz(tmp_path, arrays))
    assert sae.dtype == torch.float64
    assert torch.equal(sae.W_dec, torch.from_numpy(arrays["W_dec"].astype("<f8")))


def test_forward_matches_gemma_scope_reference(tmp_path: Path) -> None:
    """Gemma Scope's own JumpReLU: acts = (pre > θ) * relu(pre), pre = x @ W_enc + b_enc."""
    arrays = sae_arrays(8, 24)
    sae = load_sae(write_npz(tmp_path, arrays))
    x = torch.randn(64, 8)
    W_enc, b_enc, W_dec, b_dec, theta = (
        torch.from_numpy(arrays[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    )
    pre = x @ W_enc + b_enc
    acts = (pre > theta) * torch.relu(pre)
    torch.testing.assert_close(sae.encode(x), acts, rtol=0, atol=0)
    torch.testing.assert_close(sae(x), acts @ W_dec + b_dec)


# ---------------------------------------------------------------- choosing L0 and width
@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "gemma-scope-2b-pt-res"
    written = write_gemma_repo(
        root,
        {L: {"16k": [22, 41, 82, 176], "65k": [21, 141]} for L in (11, 12)} | {13: {"16k": [57, 110]}},
    )
    write_npz(root / "embedding" / "width_4k" / "average_l0_6", seed=99)
    return root, written


def test_exact_l0_no_warning(repo, recwarn) -> None:
    root, written = repo
    sae = load_sae(root / "layer_12" / "width_16k", l0=41)
    assert_same(sae, written[(12, "16k", 41)])
    assert sae.info.average_l0 == 41.0 and sae.info.layer == 12
    assert not [w for w in recwarn if issubclass(w.category, L0ChoiceWarning)]


def test_nearest_l0_is_reported(repo) -> None:
    root, written = repo
    pattern = r"average_l0_41 \(no average_l0_50: the nearest L0; available: \[22, 41, 82, 176\]\)"
    with pytest.warns(L0ChoiceWarning, match=pattern):
        sae = load_sae(root / "layer_12" / "width_16k", l0=50)
    assert_same(sae, written[(12, "16k", 41)])


def test_no_l0_picks_published_canonical(repo) -> None:
    root, written = repo
    with pytest.warns(L0ChoiceWarning, match="the published canonical L0"):
        sae = load_sae(root / "layer_12", width="16k")
    assert_same(sae, written[(12, "16k", 82)])
    assert sae.info.model_name == "gemma-2-2b"
    assert sae.info.hook_name == "blocks.12.hook_resid_post"
    assert sae.info.neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"


def test_no_l0_unknown_canonical_uses_nearest_100(repo) -> None:
    root, written = repo
    with pytest.warns(L0ChoiceWarning, match="the L0 nearest 100"):
        sae = load_sae(root / "layer_13" / "width_16k")
    assert_same(sae, written[(13, "16k", 110)])
    assert sae.info.neuronpedia_id is None  # not a published canonical SAE


def test_non_canonical_l0_has_no_neuronpedia_id(repo) -> None:
    root, _ = repo
    sae = load_sae(root / "layer_12" / "width_16k" / "average_l0_176")
    assert sae.info.neuronpedia_id is None and sae.info.average_l0 == 176.0


def test_layer_with_several_widths_needs_width(repo) -> None:
    root, _ = repo
    with pytest.raises(ValueError, match=r"layer_12 holds several widths \['16k', '65k'\]; pass width="):
        load_sae(root / "layer_12", l0=82)
    with pytest.raises(ValueError, match=r"has no width_1m/; it holds widths \['16k', '65k'\]"):
        load_sae(root / "layer_12", width="1m", l0=82)
    assert load_sae(root / "layer_12", width=65536, l0=141).info.average_l0 == 141.0


def test_load_sae_refuses_a_stack(repo) -> None:
    root, _ = repo
    with pytest.raises(ValueError, match=r"holds SAEs for layers \[11, 12, 13\]; use load_stack"):
        load_sae(root)


def test_embedding_sae_loads_with_hook_embed(repo) -> None:
    root, _ = repo
    sae = load_sae(root / "embedding")
    assert sae.info.hook_name == "hook_embed" and sae.info.layer is None


@pytest.mark.parametrize(
    ("repo_name", "hook", "npid"),
    [
        ("gemma-scope-2b-pt-mlp", "blocks.12.hook_mlp_out", "gemma-2-2b/12-gemmascope-mlp-16k"),
        ("gemma-scope-2b-pt-att", "blocks.12.attn.hook_z", "gemma-2-2b/12-gemmascope-att-16k"),
        ("gemma-scope-9b-it-res", "blocks.12.hook_resid_post", None),
    ],
)
def test_site_metadata(tmp_path: Path, repo_name: str, hook: str, npid: str | None) -> None:
    canonical = {"gemma-scope-2b-pt-mlp": 108, "gemma-scope-2b-pt-att": 85}.get(repo_name, 82)
    write_npz(tmp_path / repo_name / "layer_12" / "width_16k" / f"average_l0_{canonical}")
    sae = load_sae(tmp_path / repo_name / "layer_12")
    assert sae.info.hook_name == hook and sae.info.neuronpedia_id == npid
    assert sae.info.model_name == ("gemma-2-9b-it" if "9b-it" in repo_name else "gemma-2-2b")


# ---------------------------------------------------------------- stacks
def test_repo_stack_by_width_and_l0(repo) -> None:
    root, written = repo
    with pytest.warns(L0ChoiceWarning) as rec:
        saes = load_stack(root, width="16k", l0=82)
    assert [s.info.layer for s in saes] == [11, 12, 13]
    for s in saes[:2]:
        assert_same(s, written[(s.info.layer, "16k", 82)])
    assert_same(saes[2], written[(13, "16k", 57)])  # |57 - 82| = 25 < |110 - 82| = 28
    assert len(rec) == 1 and "layer 13: " in str(rec[0].message) and "layer 12" not in str(rec[0].message)


def test_repo_stack_layers_selection(repo) -> None:
    root, written = repo
    saes = load_stack(root, layers=range(11, 13), width="65k", l0=141)
    assert [s.info.layer for s in saes] == [11, 12]
    saes = load_stack(root, layers=[12, 11], width="16k", l0=22)
    assert [s.info.layer for s in saes] == [11, 12]
    with pytest.raises(ValueError, match=r"no folders for layers \[7\]; it holds layers \[11, 12, 13\]"):
        load_stack(root, layers=[7, 11], width="16k")
    with pytest.raises(ValueError, match="must be integers"):
        load_stack(root, layers=["11"], width="16k")  # type: ignore[list-item]


def test_repo_stack_several_widths_needs_width(repo) -> None:
    root, _ = repo
    with pytest.raises(ValueError, match=r"holds several widths \['16k', '65k'\]; pass width="):
        load_stack(root, l0=82)
    with pytest.raises(ValueError, match=r"layer_13 has no width_65k/; it holds widths \['16k'\]"):
        load_stack(root, width="65k")
    (sae,) = load_stack(root, layers=[13], l0=57)  # one width there: no width= needed
    assert sae.info.average_l0 == 57.0


def test_flat_stack(tmp_path: Path) -> None:
    written = {L: write_npz(tmp_path / f"layer_{L}", sae_arrays(seed=L)) for L in (10, 2, 0)}
    (tmp_path / "README.md").write_text("not an SAE")
    saes = load_stack(tmp_path)
    assert [s.info.layer for s in saes] == [0, 2, 10]
    for s in saes:
        assert_same(s, sae_arrays(seed=s.info.layer)) and s.info.source == str(written[s.info.layer])


def test_stack_of_one_sae_folder_is_refused(tmp_path: Path) -> None:
    write_npz(tmp_path)
    with pytest.raises(ValueError, match="holds a single SAE .use load_sae."):
        load_stack(tmp_path)


# ---------------------------------------------------------------- Hugging Face cache
@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_hf_cache_snapshot_via_refs_main(repo, tmp_path: Path) -> None:
    root, written = repo
    hub = tmp_path / "hub"
    models = hf_cache_repo(hub, "google/gemma-scope-2b-pt-res", root, "a" * 40)
    old = tmp_path / "old"
    write_npz(old / "layer_12" / "width_16k" / "average_l0_82", seed=5)
    hf_cache_repo(hub, "google/gemma-scope-2b-pt-res", old, "b" * 40, main=False)  # newer, not main
    snap = models / "snapshots" / ("a" * 40)
    snap_file = snap / "layer_12" / "width_16k" / "average_l0_82" / "params.npz"
    assert snap_file.is_symlink()
    for path in (models, models / "snapshots", hub):
        (sae,) = load_stack(path, width="16k", l0=82, layers=[12])
        assert_same(sae, written[(12, "16k", 82)])
        assert sae.info.source == str(snap_file)  # the snapshot path, not the blob's
        assert sae.info.neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"
    for path in (snap_file, snap / "layer_12"):
        assert_same(load_sae(path, width="16k", l0=82), written[(12, "16k", 82)])


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_hf_cache_newest_snapshot_without_refs(tmp_path: Path) -> None:
    for i, rev in enumerate(("1" * 40, "2" * 40)):
        src = tmp_path / f"src{i}"
        write_npz(src / "layer_0", sae_arrays(seed=i))
        models = hf_cache_repo(tmp_path / "hub", "someone/flat-saes", src, rev, main=False)
        t = time.time() + 10 * i
        os.utime(models / "snapshots" / rev, (t, t))
    (sae,) = load_stack(models)
    assert_same(sae, sae_arrays(seed=1))


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_hf_cache_root_with_several_repos_lists_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_npz(src / "layer_0")
    hub = tmp_path / "hub"
    for name in ("google/gemma-scope-2b-pt-res", "google/gemma-scope-2b-pt-mlp"):
        hf_cache_repo(hub, name, src, "c" * 40)
    pattern = r"several repos \['models--google--gemma-scope-2b-pt-mlp', 'models--google--gemma-scope-2b-pt-res'\]"
    with pytest.raises(ValueError, match=pattern):
        load_stack(hub)


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_hf_cache_broken_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src"
    file = write_npz(src / "layer_0")
    models = hf_cache_repo(tmp_path / "hub", "x/y", src, "d" * 40)
    for blob in (models / "blobs").iterdir():
        blob.unlink()
    link = models / "snapshots" / ("d" * 40) / "layer_0" / file.name
    with pytest.raises(FileNotFoundError, match="broken symlink"):
        load_sae(link)


# ---------------------------------------------------------------- the shared real files
@pytest.mark.parametrize(("name", "n_layers", "d", "F"), [("stories260k", 5, 64, 512), ("minilm", 7, 384, 2048)])
def test_shared_real_files(shared_data: Path, name: str, n_layers: int, d: int, F: int) -> None:
    saes = load_stack(shared_data / name / "saes")
    assert [s.info.layer for s in saes] == list(range(n_layers))
    for s in saes:
        assert (s.d_in, s.d_sae, s.dtype) == (d, F, torch.float32)
        with np.load(Path(s.info.source)) as z:
            assert_same(s, {k: z[k] for k in z.files})
