"""The benchmark's pinned baseline: the package as it was at a named commit, importable beside the current one.

DECISIONS.md section 11: speed targets are measured against the plain, parity-passing implementation as of a named
commit. Nothing is vendored: at benchmark time `git archive <commit> modeling_pat configuration` is unpacked into a
temporary folder and the package is imported from there under another name (`pat_baseline_<commit>`), so both
versions live in one process and are timed side by side. Only the package's own code is used.

The unpacked package's `__init__.py` is replaced by an empty one: the real one registers the model with the Auto
classes and the image-segmentation pipeline, which would overwrite the current package's registrations. The
modules the benchmark needs are imported directly (`configuration_pat`, `modeling_pat`, `image_processing_pat`);
their relative imports resolve inside the unpacked copy, and `PRESETS_DIR` finds the commit's own `configuration/`.

    from benchmarks.baseline import load_baseline
    base = load_baseline()                      # commit 8eb9edb by default
    config = base.PATConfig.from_preset("san-clip-vit-b16")
    model = base.PATForOpenVocabSegmentation(config)
"""

import atexit
import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace


REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "8eb9edb"  # "PAT end to end": the last commit before the fast paths (DECISIONS.md section 11)
_LOADED: dict[str, SimpleNamespace] = {}


def load_baseline(commit: str = BASELINE_COMMIT, repo: Path = REPO_ROOT) -> SimpleNamespace:
    """Import `modeling_pat` as of `commit` (from `git archive`) -> namespace with PATConfig,
    PATForOpenVocabSegmentation, PATImageProcessor, the three modules and the resolved commit hash."""
    if commit in _LOADED:
        return _LOADED[commit]
    full = resolve_commit(commit, repo)
    if full is None:
        raise RuntimeError(f"The baseline commit {commit} is not in {repo}: the benchmark needs a git checkout of this "
                           "repository that contains it (not a shallow clone).")
    archive = _git(repo, "archive", "--format=tar", full, "modeling_pat", "configuration")
    root = Path(tempfile.mkdtemp(prefix=f"pat-baseline-{full[:7]}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    name = f"pat_baseline_{full[:7]}"
    package = root / name
    (root / "modeling_pat").rename(package)
    (package / "__init__.py").write_text(f'"""modeling_pat at {full} (benchmark baseline; no Auto registration)."""\n')
    sys.path.insert(0, str(root))
    try:
        modules = {short: importlib.import_module(f"{name}.{short}") for short in (
            "configuration_pat", "modeling_pat", "image_processing_pat", "clip_tower")}
    finally:
        sys.path.remove(str(root))
    baseline = SimpleNamespace(
        commit=full,
        package=name,
        path=package,
        PATConfig=modules["configuration_pat"].PATConfig,
        PATForOpenVocabSegmentation=modules["modeling_pat"].PATForOpenVocabSegmentation,
        PATImageProcessor=modules["image_processing_pat"].PATImageProcessor,
        modules=modules,
    )
    _LOADED[commit] = baseline
    return baseline


def resolve_commit(commit: str = BASELINE_COMMIT, repo: Path = REPO_ROOT) -> str | None:
    """The full hash of `commit` in `repo`, or None where git or the commit is missing (e.g. a shallow clone)."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").decode().strip()
    except RuntimeError:  # what `_git` raises for a missing git or a failed command
        return None


def _git(repo: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        raise RuntimeError(
            f"Cannot read the baseline commit with git ({' '.join(args[:2])}): {detail.decode(errors='replace').strip()}"
            " -- the benchmark needs a git checkout of this repository that contains the baseline commit."
        ) from error
