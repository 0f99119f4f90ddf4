"""The package's layering: the model and its processors (flat modules in `modeling_pat/`) never import the
applications (`modeling_pat/apps/`), and they load and run with the applications absent."""

import ast
import subprocess
import sys
from pathlib import Path

import modeling_pat


PACKAGE = Path(modeling_pat.__file__).parent
REPO = PACKAGE.parent
# The flat modules that exist only to keep entry points and users' imports working; they import the applications.
ENTRY_MODULES = {"__init__", "cli", "data", "demo", "export", "model_card"}
# What `import modeling_pat` loads from the applications: the re-exported pipeline and inference helpers, nothing more
# (the CLI, data, training, export and demo load only when asked for, so `import modeling_pat` stays cheap).
EAGER_APPS = {"modeling_pat.apps", "modeling_pat.apps.pipeline", "modeling_pat.apps.region_query",
              "modeling_pat.apps.sliding_window"}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved against the flat package)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
        elif isinstance(node, ast.ImportFrom):  # `from .x import y` or `from . import x` inside modeling_pat/
            base = "modeling_pat" + (f".{node.module}" if node.module else "")
            imported.add(base)
            if node.module is None:
                imported.update(f"modeling_pat.{alias.name}" for alias in node.names)
    return imported


def forbidden_for_model(name: str) -> bool:
    return name.startswith("modeling_pat.apps") or name in {f"modeling_pat.{entry}" for entry in ENTRY_MODULES}


def test_the_flat_modules_never_import_the_applications():
    model_modules = [path for path in PACKAGE.glob("*.py") if path.stem not in ENTRY_MODULES]
    assert {"modeling_pat", "configuration_pat", "processing_pat", "image_processing_pat"} <= {
        path.stem for path in model_modules
    }
    offenders = {
        path.name: sorted(filter(forbidden_for_model, imported_modules(path))) for path in model_modules
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_the_import_parser_sees_every_form(tmp_path):
    """The check above would pass vacuously if the parser missed an import form; each form is caught."""
    for line in ("from .apps import cli", "from .apps.cli import main", "from . import apps", "import modeling_pat.apps",
                 "from modeling_pat.apps.data import load_split", "from .cli import main"):
        module = tmp_path / "module.py"
        module.write_text(f"def f():\n    {line}\n")
        assert any(map(forbidden_for_model, imported_modules(module))), line


def test_the_applications_live_under_apps():
    apps = {path.stem for path in (PACKAGE / "apps").glob("*.py")}
    apps |= {path.parent.name for path in (PACKAGE / "apps").glob("*/__init__.py")}  # subpackages such as data/
    assert {"cli", "data", "pipeline", "sliding_window", "region_query", "training", "evaluation"} <= apps
    flat = {path.stem for path in PACKAGE.glob("*.py")}
    assert not (flat - ENTRY_MODULES) & apps, "an application module is also flat"


def run_python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


# The flat modules loaded as Hub remote code sees them: the package's `__init__` (which re-exports the applications)
# is not run, and any import of `modeling_pat.apps` fails instead of loading.
MODEL_WITHOUT_APPS = f"""
import importlib.abc, sys, types

class BlockApps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_pat.apps" or name.startswith("modeling_pat.apps."):
            raise ImportError(f"the model imported the application module {{name}}")
        return None

sys.meta_path.insert(0, BlockApps())
package = types.ModuleType("modeling_pat")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["modeling_pat"] = package

import torch
from modeling_pat.configuration_pat import PATConfig
from modeling_pat.modeling_pat import PATForOpenVocabSegmentation
from modeling_pat.processing_pat import PATProcessor

config = PATConfig.from_preset("san-tiny")
model = PATForOpenVocabSegmentation(config).eval()
processor = PATProcessor.from_config(config)
inputs = processor(images=torch.rand(3, 64, 96), text=["cat", "sky"], return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
label_map = processor.image_processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 96)])[0]
assert label_map.shape == (64, 96), label_map.shape
loaded = sorted(name for name in sys.modules if name.startswith("modeling_pat."))
assert not [name for name in loaded if name.startswith("modeling_pat.apps")], loaded
print("ok", len(loaded))
"""


def test_the_model_runs_with_the_applications_absent():
    result = run_python(MODEL_WITHOUT_APPS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_importing_the_package_loads_only_the_re_exported_applications():
    result = run_python(
        "import sys, modeling_pat\n"
        "print(sorted(name for name in sys.modules if name.startswith('modeling_pat.apps')))\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(ast.literal_eval(result.stdout.strip().splitlines()[-1])) == EAGER_APPS


# The names `modeling_pat.data` exported before the applications moved to `modeling_pat.apps.data`.
DATA_NAMES_BEFORE_THE_SPLIT = (
    "BENCHMARKS",
    "BenchmarkLayout",
    "DatasetSpec",
    "EpochCallback",
    "FOLDER_OPTIONS",
    "HUB_OPTIONS",
    "IMAGE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "KIND_ALIASES",
    "LABEL_COLUMNS",
    "LABEL_EXTENSIONS",
    "LabelFileError",
    "LabelMapping",
    "SANTrainAugmentation",
    "SAN_TRAIN_SHORT_EDGES",
    "SPLIT_ALIASES",
    "SegmentationCollator",
    "SegmentationEvalDataset",
    "SegmentationSplit",
    "SegmentationTrainDataset",
    "check_label_values",
    "check_split",
    "default_data_root",
    "hsv_uint8_to_rgb",
    "load_benchmark",
    "load_folder",
    "load_hub_dataset",
    "load_split",
    "load_vocabulary",
    "pair_files",
    "palette_to_class_indices",
    "photometric_distortion",
    "read_id2label",
    "resize_image",
    "resize_label_nearest",
    "rgb_to_hsv_uint8",
    "single_channel_label",
)


def test_modeling_pat_data_keeps_every_name_it_exported_before_the_split():
    import modeling_pat.data as data

    missing = [name for name in DATA_NAMES_BEFORE_THE_SPLIT if not hasattr(data, name)]
    assert not missing, missing
    assert set(DATA_NAMES_BEFORE_THE_SPLIT) <= set(data.__all__)
