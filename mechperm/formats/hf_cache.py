"""The Hugging Face hub cache layout: ``models--ORG--NAME/{refs,snapshots,blobs}``.

``hf_hub_download`` / ``snapshot_download`` store each file once in ``blobs/`` and link it from
``snapshots/<revision>/<path in repo>`` (symlinks on Linux and macOS; copies where symlinks are
unavailable). We only pick the snapshot folder; opening a file there follows its symlink.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_hf_cache", "pick_snapshot", "resolve_repo_subpath"]


def pick_snapshot(repo_dir: Path) -> Path:
    """The snapshot ``refs/main`` names if present, else the most recently written one.

    Raises
    ------
    ValueError
        ``repo_dir/snapshots`` is missing or empty.
    """
    snapshots = repo_dir / "snapshots"
    revs = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if not revs:
        raise ValueError(
            f"{repo_dir} is a Hugging Face cache repo folder without snapshots/<revision>/ "
            f"folders; the download did not finish (run it again)"
        )
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        if (snapshots / rev).is_dir():
            return snapshots / rev
    return max(revs, key=lambda p: (p.stat().st_mtime, p.name))


def resolve_hf_cache(path: Path) -> Path:
    """Map a hub cache root, a ``models--*`` folder or its ``snapshots/`` folder to one snapshot.

    Any other path comes back unchanged.

    Raises
    ------
    ValueError
        ``path`` is a hub cache root holding several ``models--*`` repos (the message lists them).
    """
    if not path.is_dir():
        return path
    if path.name == "snapshots" and path.parent.name.startswith("models--"):
        return pick_snapshot(path.parent)
    if path.name.startswith("models--") and (path / "snapshots").is_dir():
        return pick_snapshot(path)
    repos = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("models--"))
    if len(repos) == 1:
        return pick_snapshot(repos[0])
    if len(repos) > 1:
        raise ValueError(
            f"{path} is a Hugging Face cache holding several repos {[r.name for r in repos]}; "
            f"pass one of them, e.g. {repos[0]}"
        )
    return path


def resolve_repo_subpath(path: Path) -> Path | None:
    """``models--ORG--NAME/<path in the repo>`` (which does not exist as such) → that path inside
    the repo's snapshot, e.g. a Gemma Scope 2 site: ``models--google--gemma-scope-2-1b-pt/
    resid_post``. None when no ancestor is a cache repo folder or its snapshot lacks the path."""
    for parent in path.parents:
        if parent.name.startswith("models--") and (parent / "snapshots").is_dir():
            inside = pick_snapshot(parent) / path.relative_to(parent)
            return inside if inside.exists() else None
    return None
