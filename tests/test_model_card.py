"""Tests for write_model_card: Hub metadata read back with ModelCard.load, evaluation table, SAN vs PAT wording, and
the files a push of model + processor + card would upload. Offline: `card.validate()` (a Hub POST) is never called."""

import json

import pytest
import torch
from huggingface_hub import ModelCard

from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATProcessor, register_for_auto_classes
from modeling_pat.apps.model_card import write_model_card


EVAL_RESULTS = [
    {"dataset_name": "ADE20K-150", "dataset_type": "scene_parse_150", "dataset_split": "validation", "mean_iou": 27.5},
    {"dataset_name": "Pascal VOC-20", "dataset_type": "pascal_voc", "dataset_split": "validation", "mean_iou": 94.0},
]


def saved_config(folder, **overrides):
    config = PATConfig.from_preset("san-tiny")
    for key, value in overrides.items():
        setattr(config, key, value)
    config.save_pretrained(folder)
    return config


def test_metadata_round_trips_through_model_card_load(tmp_path):
    saved_config(tmp_path, clip_model_name="ViT-B-16")
    path = write_model_card(
        tmp_path,
        datasets=["coco_stuff"],
        eval_results=EVAL_RESULTS,
        tags=["my-tag", "clip"],
        model_name="san-vit-b16",
    )
    assert path == tmp_path / "README.md"
    data = ModelCard.load(path).data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-segmentation"
    assert data.license == "mit"
    assert data.metrics == ["mean_iou"]
    assert data.datasets == ["coco_stuff"]
    assert data.base_model == "openai/clip-vit-base-patch16"  # derived from clip_model_name
    expected_tags = ["vision", "image-segmentation", "semantic-segmentation", "open-vocabulary", "clip", "san"]
    assert data.tags == expected_tags + ["my-tag"]
    assert data.model_name == "san-vit-b16"
    results = {r.dataset_name: r for r in data.eval_results}
    assert set(results) == {"ADE20K-150", "Pascal VOC-20"}
    ade = results["ADE20K-150"]
    assert (ade.task_type, ade.dataset_type) == ("image-segmentation", "scene_parse_150")
    assert ade.dataset_split == "validation"
    assert (ade.metric_type, ade.metric_value) == ("mean_iou", 27.5)


def test_sections_and_evaluation_table(tmp_path):
    saved_config(tmp_path)
    text = write_model_card(tmp_path, eval_results=EVAL_RESULTS, repo_id="someone/san-tiny").read_text()
    for heading in ("## Model description", "## Intended uses and limitations", "## How to use", "## Training",
                    "## Evaluation", "## Citation"):
        assert heading in text
    assert "| Dataset | Split | mIoU (%) |" in text
    assert "| ADE20K-150 | validation | 27.5 |" in text and "| Pascal VOC-20 | validation | 94.0 |" in text
    assert "import modeling_pat" in text and "candidate_labels=" in text
    assert 'pipeline("image-segmentation", model="someone/san-tiny")' in text
    assert "trust_remote_code=True" in text
    assert "No training details were provided" in text
    assert "@inproceedings{xu2023side" in text
    assert "Side Adapter Network for Open-Vocabulary Semantic Segmentation" in text
    assert "{{" not in text and "{%" not in text  # every template variable was filled


def test_without_eval_results_there_is_no_model_index(tmp_path):
    saved_config(tmp_path)
    path = write_model_card(tmp_path, license="apache-2.0", training_summary="Trained on *my data* for 10 steps.")
    card = ModelCard.load(path)
    assert "model-index" not in card.content.split("---")[1]
    assert card.data.eval_results is None and card.data.license == "apache-2.0"
    assert card.data.base_model is None  # the tiny CLIP has no Hub counterpart
    assert "No evaluation results are reported" in card.text
    assert "Trained on *my data* for 10 steps." in card.text


def test_san_and_pat_wording(tmp_path):
    san_dir, pat_dir = tmp_path / "san", tmp_path / "pat"
    saved_config(san_dir)
    saved_config(pat_dir, use_pyramid_tokenization=True)
    san = ModelCard.load(write_model_card(san_dir))
    pat = ModelCard.load(write_model_card(pat_dir))
    assert "san" in san.data.tags and "pat" not in san.data.tags
    assert "pat" in pat.data.tags and "san" not in pat.data.tags
    assert "**SAN** (Side Adapter Network" in san.text and "Feature Pyramid Tokenization" not in san.text
    assert "**PAT** (Feature Pyramid Tokenization, arXiv 2412.14145)" in pat.text
    assert "use_pyramid_tokenization: true" in pat.text and "use_pyramid_tokenization: false" in san.text
    # SAN is cited by both; PAT only by PAT cards.
    assert "2412.14145" not in san.text
    pat_citations = pat.text.split("## Citation")[1]
    assert "@inproceedings{xu2023side" in pat_citations
    assert "Incorporating Feature Pyramid Tokenization and Open Vocabulary Semantic Segmentation" in pat_citations
    assert "arXiv:2412.14145" in pat_citations


def test_converted_checkpoint_wording(tmp_path):
    saved_config(tmp_path)
    text = write_model_card(tmp_path, converted_from="Mendel192/san", source_checkpoint="san_vit_b_16.pth").read_text()
    assert "converted from the official SAN checkpoint [`Mendel192/san`](https://huggingface.co/Mendel192/san)" in text
    assert "`san_vit_b_16.pth`" in text and "COCO-Stuff" in text
    assert "No training details were provided" not in text


def test_bad_eval_results_are_rejected(tmp_path):
    saved_config(tmp_path)
    with pytest.raises(ValueError, match="mean_iou"):
        write_model_card(tmp_path, eval_results=[{"dataset_name": "ADE", "dataset_type": "ade", "miou": 1.0}])


def test_files_a_push_to_hub_would_upload(tmp_path):
    """Everything `push_to_hub` of model, processor and card would send, short of the upload."""
    register_for_auto_classes()  # as the converter does, so the repository also carries its code
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny"))
    model.save_pretrained(tmp_path)
    PATProcessor.from_config(model.config).save_pretrained(tmp_path)
    write_model_card(tmp_path, repo_id="someone/san-tiny", converted_from="Mendel192/san")
    files = sorted(path.name for path in tmp_path.iterdir())
    expected = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                "README.md"}
    assert expected <= set(files), files
    assert {"configuration_pat.py", "modeling_pat.py", "processing_pat.py"} <= set(files), files
    # no application code (apps/, entry modules) travels with the model
    assert not {"model_card.py", "pipeline.py", "sliding_window.py", "cli.py", "data.py"} & set(files), files
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"
    assert "| Parameters | " in card.text


# -- python -m modeling_pat.model_card --------------------------------------------------------------------------------
def test_command_line_writes_the_card(tmp_path, capsys):
    from modeling_pat.apps.model_card import main

    saved_config(tmp_path / "model")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(EVAL_RESULTS))
    code = main([str(tmp_path / "model"), "--eval-results", str(results), "--repo-id", "someone/san-tiny",
                 "--datasets", "coco_stuff", "--tags", "my-tag", "--converted-from", "Mendel192/san",
                 "--source-checkpoint", "san_vit_b_16.pth", "--license", "apache-2.0"])
    assert code == 0 and "README.md" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "model" / "README.md")
    results = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    assert results == {"ADE20K-150": 27.5, "Pascal VOC-20": 94.0}
    assert card.data.license == "apache-2.0" and card.data.datasets == ["coco_stuff"] and "my-tag" in card.data.tags
    assert 'model="someone/san-tiny"' in card.text and "`san_vit_b_16.pth`" in card.text


@pytest.mark.parametrize(
    "payload",
    [
        {"eval_results": EVAL_RESULTS},  # wrapped
        {"model": "m", "results": [  # an evaluation results table: mIoU as a fraction
            {"dataset": "ade150", "display_name": "ADE20K-150", "dataset_type": "scene_parse_150",
             "split": "validation", "mean_iou": 0.275},
            {"dataset": "voc20", "display_name": "Pascal VOC-20", "dataset_type": "pascal_voc", "split": "validation",
             "mean_iou": 0.94}]},
    ],
)
def test_eval_results_file_formats(tmp_path, payload):
    from modeling_pat.apps.model_card import read_eval_results

    (tmp_path / "r.json").write_text(json.dumps(payload))
    entries = read_eval_results(tmp_path / "r.json")
    assert [(e["dataset_name"], e["mean_iou"], e["dataset_split"]) for e in entries] == [
        ("ADE20K-150", 27.5, "validation"), ("Pascal VOC-20", 94.0, "validation")
    ]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "is not a saved model folder"),
        (lambda d: (saved_config(d / "m"), (d / "r.json").write_text("{not json")), "cannot read it as JSON"),
        (lambda d: (saved_config(d / "m"), (d / "r.json").write_text('[{"dataset_name": "A", "miou": 3}]')),
         "mean_iou"),
        (lambda d: (saved_config(d / "m"), (d / "r.json").write_text('"text"')), "must hold a list of results"),
    ],
)
def test_command_line_errors_exit_2(tmp_path, capsys, setup, message):
    from modeling_pat.apps.model_card import main

    setup(tmp_path)
    results = tmp_path / "r.json"
    argv = [str(tmp_path / "m")] + (["--eval-results", str(results)] if results.exists() else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m" / "README.md").exists()


def test_module_runs_as_a_script(tmp_path):
    import os
    import subprocess
    import sys

    saved_config(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "modeling_pat.model_card", str(tmp_path), "--model-name", "tiny"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "RuntimeWarning" not in run.stderr  # the package does not import the module before runpy runs it
    assert ModelCard.load(tmp_path / "README.md").data.model_name == "tiny"


def test_a_failed_card_write_keeps_the_previous_card(tmp_path, monkeypatch):
    saved_config(tmp_path)
    (tmp_path / "README.md").write_text("my hand-written card")

    def save_half(card, path):  # as a full disk would: part of the text, then an error
        open(path, "w").write(str(card)[:50])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ModelCard, "save", save_half)
    with pytest.raises(OSError, match="No space"):
        write_model_card(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my hand-written card"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_truncated_weights_file_is_named(tmp_path, capsys):
    from modeling_pat.apps.model_card import main

    config = PATConfig.from_preset("san-tiny")
    PATForOpenVocabSegmentation(config).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{weights} is unusable: truncated" in err and not (tmp_path / "README.md").exists()
