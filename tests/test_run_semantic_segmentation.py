"""`run_semantic_segmentation.py` end to end on the real image / label pairs of tests/fixtures/data.

* a tiny SAN fine-tuned for a few dozen steps learns (loss down, train-set mIoU up), with every loss term logged,
  safetensors checkpoints, the benchmark table and the model card;
* the same run under `accelerate launch --multi_gpu --num_processes 2 ... --use_cpu` (two CPU processes, gloo), with
  metrics gathered across the processes;
* a training process killed with SIGKILL after a checkpoint and resumed continues at the saved step with the same
  losses, the same data order and the same optimizer state as an uninterrupted run;
* evaluation on several benchmark layouts in one command (8-bit and 16-bit labels), the predicted maps it writes,
  and the clear error for a preset whose CLIP weights cannot be downloaded;
* one PAT (pyramid tokenization) fine-tuning run.

The tiny models have random CLIP towers, which a few dozen steps cannot get around unless the starting checkpoint
helps (`tiny_start_model`): a random text tower maps every class name to nearly the same direction (cosine ~0.98 with
the 14 templates, ~0.85 with "{}"), so the start uses the template "{}", draws the token embeddings with std 0.2
(open_clip's 0.02 keeps the names close) and zeroes the text tower's positional and start/end-of-text token
embeddings (names then differ: mean cosine ~0.3); and with `initializer_range` 0.02 the
attention biases of all queries are equal to ~1e-8, so every query gets the same class and a map has one class
whatever is learnt in 30 steps; `initializer_range` 0.2 makes the queries differ from the start.
"""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from modeling_pat import PATConfig, PATForOpenVocabSegmentation
from modeling_pat.apps.data import load_split, load_vocabulary

import segmentation_layouts as layouts
from segmentation_layouts import ADE_STEMS, VOC_STEMS


REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "run_semantic_segmentation.py"
sys.path.insert(0, str(REPO))
import run_semantic_segmentation as runner  # noqa: E402


CLASSES = ["wall", "building", "sky", "tree", "road", "sidewalk", "car", "grass"]
SMALL = ["--crop_size", "128", "--train_short_edges", "128", "160", "192", "--test_short_edge", "128",
         "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0"]


def tiny_start_model(preset: str) -> PATForOpenVocabSegmentation:
    """A tiny random model that can learn classes in a few dozen steps (see the module docstring)."""
    torch.manual_seed(0)
    config = PATConfig.from_preset(preset)
    config.prompt_templates = ["{}"]
    config.initializer_range = 0.2
    model = PATForOpenVocabSegmentation(config)
    clip = model.model.clip_tower.clip
    with torch.no_grad():
        clip.token_embedding.weight.normal_(std=0.2)  # open_clip's 0.02 leaves the names' embeddings too alike
        clip.positional_embedding.zero_()
        clip.token_embedding.weight[49406:49408].zero_()  # <start_of_text>, <end_of_text>
    return model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A starting checkpoint (tiny SAN, single prompt template) and an ADE20K folder dataset with 8 classes:
    5 training images, 1 validation image."""
    root = tmp_path_factory.mktemp("run_semseg")
    tiny_start_model("san-tiny").save_pretrained(root / "start")
    ade150 = load_vocabulary("ade150")["class_names"]
    lut = np.full(256, 255, dtype=np.int64)
    for index, name in enumerate(CLASSES):
        lut[ade150.index(name)] = index
    layouts.make_folder(root / "ade8", {"train": ADE_STEMS[:5], "validation": ADE_STEMS[5:]}, CLASSES,
                        lambda stem: lut[layouts.ade_label_150(stem)])
    return root


def run_args(workspace, output_dir, *extra) -> list[str]:
    return ["--model_name_or_path", str(workspace / "start"), "--train_dataset", f"folder={workspace / 'ade8'}",
            "--output_dir", str(output_dir), *SMALL, *extra]


def log_entries(output_dir, key: str) -> list[dict]:
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if key in entry]


def subprocess_env(threads: int = 2) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


# -- fine-tuning learns ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fine_tune_tiny_san_learns(workspace, tmp_path):
    output = tmp_path / "run"
    assert runner.main(run_args(
        workspace, output, "--eval_datasets", f"folder={workspace / 'ade8'}:train", f"folder={workspace / 'ade8'}",
        # 60 steps: only SAN's trainable set learns (side network, CLIP's positional embedding; the loaded CLIP stays
        # frozen), which on these 5 images needs about twice the steps that a fully trainable CLIP did
        "--do_train", "--do_eval", "--max_steps", "60", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "5", "--learning_rate", "2e-3", "--logging_steps", "5",
        "--eval_strategy", "steps", "--eval_steps", "30", "--eval_on_start", "--save_steps", "30", "--seed", "0",
    )) == 0

    losses = [entry["loss"] for entry in log_entries(output, "loss_ce")]
    train_miou = [entry["eval_ade8_train_mean_iou"] for entry in log_entries(output, "eval_ade8_train_mean_iou")]
    accuracy = [entry["eval_ade8_train_overall_accuracy"] for entry in log_entries(output, "eval_ade8_train_mean_iou")]
    print(f"losses {losses}\ntrain-set mIoU {train_miou}\ntrain-set pixel accuracy {accuracy}")
    assert np.mean(losses[-2:]) <= 0.85 * losses[0], losses
    assert train_miou[-1] >= 1.5 * train_miou[0] and train_miou[-1] >= train_miou[0] + 0.02, train_miou
    assert accuracy[-1] >= accuracy[0] + 0.1, accuracy

    # every weighted loss term is logged next to the total
    first = log_entries(output, "loss_ce")[0]
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"} <= set(first)
    assert sum(first[k] for k in first if k.startswith("loss_")) == pytest.approx(first["loss"], rel=2e-3)
    # checkpoints and the final model are safetensors; the training vocabulary is the model's
    for folder in (output / "checkpoint-30", output / "checkpoint-60", output):
        assert (folder / "model.safetensors").is_file() and not list(folder.glob("pytorch_model*.bin"))
    assert json.loads((output / "config.json").read_text())["id2label"]["2"] == "sky"
    # the full processor is saved beside the model, and the tokenizer's ids stay out of the config
    assert json.loads((output / "processor_config.json").read_text())["prompt_templates"] == ["{}"]
    assert "pad_token_id" not in json.loads((output / "config.json").read_text())
    # the table (markdown + JSON, per-class IoU) and the model card with the results
    table = json.loads((output / "eval_results_table.json").read_text())
    rows = {row["dataset"] + "/" + row["split"]: row for row in table["results"]}
    assert rows["ade8/train"]["num_images"] == 5 and rows["ade8/validation"]["num_images"] == 1
    assert set(rows["ade8/train"]["per_category_iou"]) == set(CLASSES)
    assert "| model |" in (output / "eval_results_table.md").read_text()
    card = (output / "README.md").read_text()
    assert "model-index" in card and "mean_iou" in card and "ade8" in card


# -- two processes ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_ddp_on_cpu(workspace, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): both train on their shard, the evaluation gathers every
    image once, and the gathered mIoU equals a single-process evaluation of the saved model."""
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 400),
        str(SCRIPT), *run_args(
            workspace, output, "--eval_datasets", f"folder={workspace / 'ade8'}:train", "--do_train", "--do_eval",
            "--max_steps", "12", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
            "--learning_rate", "2e-3", "--logging_steps", "3", "--save_strategy", "no", "--seed", "0",
        ),
    ]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(threads=1), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Process rank 1 of 2" in result.stdout + result.stderr
    losses = [entry["loss"] for entry in log_entries(output, "loss_ce")]
    assert losses[-1] < losses[0], losses
    eval_metrics = json.loads((output / "eval_results.json").read_text())
    assert eval_metrics["eval_ade8_train_num_images"] == 5  # 3 + 2 images gathered, the padded duplicate dropped
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and state["train_batch_size"] == 2

    single = tmp_path / "single"
    assert runner.main(["--model_name_or_path", str(output), "--eval_datasets", f"folder={workspace / 'ade8'}:train",
                        "--do_eval", "--per_device_eval_batch_size", "5", "--output_dir", str(single), *SMALL]) == 0
    single_metrics = json.loads((single / "eval_results.json").read_text())
    assert single_metrics["eval_ade8_train_mean_iou"] == pytest.approx(eval_metrics["eval_ade8_train_mean_iou"],
                                                                        abs=1e-9)


# -- kill and resume -----------------------------------------------------------------------------------------------------
def _train_command(workspace, output, *extra) -> list[str]:
    return [sys.executable, str(SCRIPT), *run_args(
        workspace, output, "--do_train", "--max_steps", "8", "--per_device_train_batch_size", "2",
        "--learning_rate", "2e-3", "--logging_steps", "1", "--save_steps", "4", "--seed", "3", *extra)]


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(workspace, tmp_path):
    env = subprocess_env(threads=1)  # the same thread count in every run: identical float reductions
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    # the uninterrupted run and the one that will be killed run side by side (one thread each)
    killed = subprocess.Popen(_train_command(workspace, interrupted), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    full = subprocess.Popen(_train_command(workspace, reference), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_file = interrupted / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 600
    while time.time() < deadline and killed.poll() is None:
        if state_file.is_file():
            try:
                json.loads(state_file.read_text())
                break
            except json.JSONDecodeError:  # still being written
                pass
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (interrupted / "checkpoint-8").exists()
    full_output, _ = full.communicate(timeout=600)
    assert full.returncode == 0, full_output[-3000:]

    resumed = subprocess.run(
        _train_command(workspace, interrupted, "--resume_from_checkpoint", str(interrupted / "checkpoint-4")),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    state = json.loads((interrupted / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, 9))  # steps 1-4 from the checkpoint, 5-8 after the resume, none repeated
    after = {e["step"]: e for e in log_entries(interrupted, "loss_ce")}
    before = {e["step"]: e for e in log_entries(reference, "loss_ce")}
    for step in range(1, 9):
        for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "grad_norm", "learning_rate"):
            assert after[step][key] == pytest.approx(before[step][key], rel=1e-4, abs=1e-6), (step, key)

    # optimizer state: identical at the checkpoint, and after the resumed steps
    for step in (4, 8):
        ours = torch.load(interrupted / f"checkpoint-{step}" / "optimizer.pt", weights_only=True)
        theirs = torch.load(reference / f"checkpoint-{step}" / "optimizer.pt", weights_only=True)
        assert ours["state"].keys() == theirs["state"].keys() and len(ours["state"]) > 0
        for index, slot in theirs["state"].items():
            assert float(ours["state"][index]["step"]) == step
            for name in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(ours["state"][index][name], slot[name], rtol=1e-4, atol=1e-7)
        scheduler = torch.load(interrupted / f"checkpoint-{step}" / "scheduler.pt", weights_only=True)
        assert scheduler["last_epoch"] == step
    torch.testing.assert_close(load_file(interrupted / "model.safetensors"), load_file(reference / "model.safetensors"),
                               rtol=1e-4, atol=1e-5)


# -- benchmarks in one command -----------------------------------------------------------------------------------------
def test_evaluate_benchmark_layouts_in_one_command(workspace, tmp_path):
    """VOC-20 (8-bit, 255) and Pascal Context-459 (16-bit TIFF, 65535) in their own layouts, each with its own
    vocabulary: a Table-I-style table, per-class JSON, a model card, and predicted maps from which the metric module
    recomputes exactly the reported mIoU."""
    data = tmp_path / "datasets"
    layouts.make_voc(data, VOC_STEMS[:1], VOC_STEMS, prepared=True)
    layouts.make_pcontext(data, VOC_STEMS[:1], VOC_STEMS, full=True)
    output = tmp_path / "eval"
    assert runner.main([
        "--model_name_or_path", str(workspace / "start"), "--eval_datasets", "voc20", "pc459",
        "--predict_datasets", "pc459", "--data_root", str(data), "--do_eval", "--do_predict",
        "--per_device_eval_batch_size", "2", "--output_dir", str(output), *SMALL,
    ]) == 0
    table = json.loads((output / "eval_results_table.json").read_text())
    rows = {row["dataset"]: row for row in table["results"]}
    assert [row["dataset"] for row in table["results"]] == ["voc20", "pc459"]  # Table I order
    assert rows["voc20"]["num_classes"] == 20 and rows["voc20"]["ignore_index"] == 255
    assert rows["pc459"]["num_classes"] == 459 and rows["pc459"]["ignore_index"] == 65535
    assert rows["pc459"]["num_images"] == 3 and len(rows["pc459"]["per_category_iou"]) == 459
    assert rows["pc459"]["mean_iou_gt_classes"] >= rows["pc459"]["mean_iou"]
    markdown = (output / "eval_results_table.md").read_text()
    assert "| model | VOC-20 | PC-459 |" in markdown
    card = (output / "README.md").read_text()
    assert "Pascal VOC-20" in card and "Pascal Context-459" in card and "model-index" in card

    # the saved 16-bit predictions + the untouched ground truth give the reported numbers
    import evaluate

    split = load_split("pc459", "validation", data_root=str(data))
    predictions, references = [], []
    for index in range(len(split)):
        _, label, stem = split.load(index)
        prediction = np.array(Image.open(output / "predictions" / "predict_pc459" / f"{stem}.png"))
        assert prediction.shape == label.shape and prediction.dtype == np.uint16
        predictions.append(prediction)
        references.append(label)
    metric = evaluate.load(str(REPO / "metrics" / "mean_iou"))
    recomputed = metric.compute(predictions=predictions, references=references, num_labels=459, ignore_index=65535)
    predict_metrics = json.loads((output / "predict_pc459_results.json").read_text())
    assert predict_metrics["predict_pc459_mean_iou"] == pytest.approx(recomputed["mean_iou"], abs=1e-9)
    assert rows["pc459"]["mean_iou"] == pytest.approx(recomputed["mean_iou"], abs=1e-9)


def test_preset_with_unreachable_clip_weights_fails_clearly(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(runner.SetupError) as error:
        runner.main(["--config_name", "san-clip-vit-b16", "--train_dataset", f"folder={workspace / 'ade8'}",
                     "--do_train", "--output_dir", str(tmp_path / "never"), *SMALL])
    message = str(error.value)
    assert "pretrained CLIP weights 'openai'" in message and "ViT-B-16" in message
    assert "--clip_pretrained" in message and "--model_name_or_path" in message
    assert not (tmp_path / "never" / "config.json").exists()


def test_recipe_defaults_and_single_file_arguments(tmp_path):
    arguments = {"model_name_or_path": "x", "eval_datasets": ["ade150"], "output_dir": str(tmp_path), "use_cpu": True}
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    model_args, data_args, training_args = runner.parse_arguments([str(tmp_path / "args.json")])
    runner.fix_training_arguments(training_args)
    assert model_args.model_name_or_path == "x" and data_args.eval_datasets == ["ade150"]
    assert training_args.learning_rate == 1e-4 and training_args.weight_decay == 1e-4
    assert training_args.max_grad_norm == 0.01 and training_args.remove_unused_columns is False
    assert str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)) == "polynomial"
    assert training_args.lr_scheduler_kwargs == {"power": 0.9, "lr_end": 0.0} and training_args.warmup_steps == 0
    assert data_args.crop_size == 640 and data_args.train_short_edges == list(range(320, 961, 64))
    assert data_args.test_short_edge == 640 and data_args.max_long_edge == 2560
    (tmp_path / "args.yaml").write_text("config_name: san-tiny\noutput_dir: out\nremove_unused_columns: true\n")
    _, _, yaml_args = runner.parse_arguments([str(tmp_path / "args.yaml")])
    runner.fix_training_arguments(yaml_args)
    assert yaml_args.remove_unused_columns is False  # handled for the user


# -- PAT -------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fine_tune_tiny_pat(workspace, tmp_path):
    tiny_start_model("pat-tiny").save_pretrained(tmp_path / "pat-start")
    output = tmp_path / "pat"
    assert runner.main([
        "--model_name_or_path", str(tmp_path / "pat-start"), "--train_dataset", f"folder={workspace / 'ade8'}",
        "--eval_datasets", f"folder={workspace / 'ade8'}", "--do_train", "--do_eval", "--max_steps", "8",
        "--per_device_train_batch_size", "2", "--learning_rate", "2e-3", "--logging_steps", "4",
        "--save_strategy", "no", "--output_dir", str(output), *SMALL,
    ]) == 0
    entries = log_entries(output, "loss_vq")
    assert {"loss_reconstruction", "loss_spatial_alignment", "loss_vq_latent", "perplexity_latent"} <= set(entries[0])
    assert entries[-1]["loss"] < entries[0]["loss"]
    assert json.loads((output / "config.json").read_text())["use_pyramid_tokenization"] is True
    assert json.loads((output / "eval_results.json").read_text())["eval_ade8_num_images"] == 1


def test_a_config_out_of_range_is_a_setup_error_naming_the_field(tmp_path):
    """A bad --config_name file or a saved model with a bad config.json: a SetupError, not a traceback."""
    config = PATConfig.from_preset("san-tiny")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_queries": 0}))
    message = r"PATConfig\.num_queries must be a whole number >= 1, got 0"
    with pytest.raises(runner.SetupError, match=rf"--config_name .*config\.json: {message}"):
        runner.build_model(runner.ModelArguments(config_name=str(tmp_path / "config.json"), clip_pretrained="none"))
    with pytest.raises(runner.SetupError, match=rf"Cannot load .*: {message}"):
        runner.build_model(runner.ModelArguments(model_name_or_path=str(tmp_path)))
    with pytest.raises(runner.SetupError, match=r"--config_name no-such-preset: Unknown preset"):
        runner.resolve_config("no-such-preset")


def test_clip_weights_that_cannot_be_fetched_stop_with_the_alternatives(monkeypatch):
    """--clip_pretrained auto offline: a SetupError saying why and what to do instead, before any model is built."""
    import open_clip

    def offline(*args, **kwargs):
        raise ConnectionError("the Hub is not reachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    config = PATConfig.from_preset("san-clip-vit-b16")
    with pytest.raises(runner.SetupError, match=r"(?s)'openai' of open_clip 'ViT-B-16': ConnectionError.*none"):
        runner.clip_weights_file(config, "auto")
    with pytest.raises(runner.SetupError, match=r"--clip_pretrained no-such-tag: open_clip has no pretrained"):
        runner.clip_weights_file(config, "no-such-tag")


def test_clip_weights_from_a_checkpoint_file(tmp_path):
    """--config_name + --clip_pretrained FILE: open_clip weights are loaded into the (frozen) CLIP tower."""
    torch.manual_seed(1)
    donor = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny")).model.clip_tower.clip
    torch.save(donor.state_dict(), tmp_path / "open_clip_model.bin")
    model = runner.build_model(runner.ModelArguments(config_name="san-tiny",
                                                     clip_pretrained=str(tmp_path / "open_clip_model.bin")))
    clip = model.model.clip_tower.clip
    torch.testing.assert_close(clip.state_dict(), donor.state_dict())
    assert clip.visual.positional_embedding.requires_grad  # SAN fine-tunes it
    assert not clip.visual.conv1.weight.requires_grad and not clip.token_embedding.weight.requires_grad


# -- nonsense arguments and bad training data: usage errors, exit code 2 -----------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--max_steps", "0"], "--max_steps 0: give a positive number of steps"),
    (["--max_steps", "-5"], "--max_steps -5"),
    (["--max_steps", "-1", "--num_train_epochs", "0"], "--num_train_epochs 0.0 trains nothing"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be at least 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0"),
    (["--learning_rate", "-1"], "--learning_rate -1.0: must be a non-negative number"),
    (["--save_steps", "0"], "--save_steps 0"),
    (["--logging_steps", "0"], "requires non-zero --logging_steps"),  # TrainingArguments' own refusal
    (["--crop_size", "0"], "--crop_size 0"),
    (["--flip_prob", "1.5"], "--flip_prob 1.5"),
    (["--train_val_split", "1"], "--train_val_split 1.0"),
    (["--max_train_samples", "0"], "--max_train_samples 0 leaves no examples"),
    (["--per_device_train_batch_size", "8", "--dataloader_drop_last", "true"], "fewer than one batch of 8"),
])
def test_nonsense_arguments_are_usage_errors(workspace, tmp_path, extra, message):
    with pytest.raises(runner.SetupError, match=message):
        runner.main(run_args(workspace, tmp_path / "never", "--do_train", "--max_steps", "4", *extra))
    assert not (tmp_path / "never" / "config.json").exists()


def test_bad_label_file_in_training_is_one_line_and_exit_2(workspace, tmp_path):
    """A label file that only the training loop reads (not the first one, checked at load) stops the run with one
    line naming the file and the value, exit code 2, no traceback."""
    data = tmp_path / "data"
    layouts.make_folder(data, {"train": ADE_STEMS[:2], "validation": ADE_STEMS[5:]}, CLASSES,
                        lambda stem: np.full(layouts.raw_label(stem).shape, 255, np.uint8))
    bad = data / "train" / "label" / f"{ADE_STEMS[1]}.png"
    Image.fromarray(np.full(np.array(Image.open(bad)).shape, 42, np.uint8)).save(bad)
    command = [sys.executable, str(SCRIPT), "--model_name_or_path", str(workspace / "start"), "--train_dataset",
               f"folder={data}", "--output_dir", str(tmp_path / "run"), *SMALL, "--do_train", "--max_steps", "2",
               "--per_device_train_batch_size", "2", "--save_strategy", "no"]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(threads=1), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bad) in last and "label value(s) 42" in last, last

    zero = subprocess.run([*command[:-7], "--do_train", "--max_steps", "0"], cwd=REPO, env=subprocess_env(threads=1),
                          capture_output=True, text=True, timeout=600)
    assert zero.returncode == 2 and "Traceback" not in zero.stderr, zero.stderr[-3000:]
    assert zero.stderr.strip().splitlines()[-1].startswith("error: --max_steps 0")


# -- resuming never picks a half-written checkpoint --------------------------------------------------------------------
# Runs the script with Trainer's RNG-state save paused at one step: the weights, optimizer and scheduler of that
# checkpoint are on disk, trainer_state.json (written last) is not, which is where the test kills the process.
PAUSE_IN_SAVE = """
import pathlib, sys, time
import transformers
sys.path.insert(0, {repo!r})
import run_semantic_segmentation as runner
save_rng_state = transformers.Trainer._save_rng_state
def paused(self, output_dir):
    if self.state.global_step == {step}:
        pathlib.Path({marker!r}).write_text(output_dir)
        time.sleep(600)
    return save_rng_state(self, output_dir)
transformers.Trainer._save_rng_state = paused
sys.exit(runner.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_resume_last_skips_a_checkpoint_killed_while_saving(workspace, tmp_path):
    env = subprocess_env(threads=1)
    output, marker = tmp_path / "run", tmp_path / "saving"
    code = PAUSE_IN_SAVE.format(repo=str(REPO), step=8, marker=str(marker))
    command = _train_command(workspace, output)
    saving = subprocess.Popen([sys.executable, "-c", code, *command[2:]], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and saving.poll() is None and not marker.is_file():
        time.sleep(0.05)
    assert saving.poll() is None, "the run ended before it reached the save of step 8"
    os.kill(saving.pid, signal.SIGKILL)  # kill -9 in the middle of writing checkpoint-8
    saving.wait(timeout=60)
    assert saving.returncode == -signal.SIGKILL
    assert (output / "checkpoint-8" / "model.safetensors").is_file()
    assert not (output / "checkpoint-8" / "trainer_state.json").exists()

    resumed = subprocess.run([*command, "--resume_from_checkpoint", "last", "--log_level", "info"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f"Skipping the incomplete checkpoint {output / 'checkpoint-8'} (no trainer_state.json)" in log
    assert re.search(r"Resuming training from checkpoint with epoch \d+ and global step 4\b", log)
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, 9))
    assert json.loads((output / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8


# -- an official model by name, and output folders that load like any checkpoint -----------------------------------
def test_official_name_starts_a_run_whose_folder_loads_everywhere(workspace, tmp_path, monkeypatch, capsys):
    """`--model_name_or_path NAME` (an official-layout checkpoint in an offline Hub cache, converted on the fly);
    the output folder then loads with AutoProcessor, pipeline (no remote-code question) and pat-segment."""
    from huggingface_hub import constants
    from test_pretrained import FILENAME, REPO_ID, SAMPLE, write_hub_cache
    from transformers import AutoProcessor, pipeline

    from modeling_pat import PATProcessor
    from modeling_pat.apps import pretrained
    from modeling_pat.apps.cli import main as pat_segment

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "converted"))
    official = pretrained.OfficialCheckpoint(REPO_ID, FILENAME, "san-tiny")
    monkeypatch.setitem(pretrained.OFFICIAL_MODELS, "tiny-official", official)
    write_hub_cache(tmp_path / "hub")
    output = tmp_path / "eval"
    assert runner.main([
        "--model_name_or_path", "tiny-official", "--eval_datasets", f"folder={workspace / 'ade8'}", "--do_eval",
        "--output_dir", str(output), *SMALL,
    ]) == 0
    assert len(pretrained.list_cache()) == 1  # converted into the cache, not next to the run

    processor = AutoProcessor.from_pretrained(output)
    assert isinstance(processor, PATProcessor) and processor.tokenizer is not None
    saved_config = json.loads((output / "config.json").read_text())
    assert not {"bos_token_id", "eos_token_id", "pad_token_id"} & set(saved_config)  # not Trainer's text-model ids
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("pipeline asked the remote-code question"))
    segments = pipeline("image-segmentation", model=str(output))(str(SAMPLE), candidate_labels=["cat", "grass"])
    assert {segment["label"] for segment in segments} <= {"cat", "grass"}
    assert pat_segment([str(SAMPLE), "--labels", "cat,grass", "--model", str(output), "--output-dir",
                        str(tmp_path / "segmented"), "-q"]) == 0


@pytest.mark.parametrize("which", ["checkpoint.pth", "saved folder", "clip weights"])
def test_a_truncated_weights_file_is_a_setup_error_naming_it(tmp_path, which):
    model = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny"))
    if which == "checkpoint.pth":
        weights = tmp_path / "san.pth"
        torch.save({"model": {"a": torch.zeros(1000)}}, weights)
        arguments = runner.ModelArguments(model_name_or_path=str(weights), config_name="san-tiny")
    elif which == "saved folder":
        model.save_pretrained(tmp_path)
        weights = tmp_path / "model.safetensors"
        arguments = runner.ModelArguments(model_name_or_path=str(tmp_path))
    else:
        weights = tmp_path / "open_clip_model.safetensors"
        from safetensors.torch import save_file

        save_file(model.model.clip_tower.clip.state_dict(), str(weights))
        arguments = runner.ModelArguments(config_name="san-tiny", clip_pretrained=str(weights))
    weights.write_bytes(weights.read_bytes()[:-64])  # an interrupted download
    with pytest.raises(runner.SetupError, match="truncated") as caught:
        runner.build_model(arguments)
    assert str(weights) in str(caught.value)


def test_a_checkpoint_that_is_not_sans_is_a_setup_error(tmp_path):
    weights = tmp_path / "other.pth"
    torch.save({"model": {"backbone.stem.weight": torch.zeros(3)}}, weights)  # whole, but not SAN's layout
    with pytest.raises(runner.SetupError, match="no mapping"):
        runner.build_model(runner.ModelArguments(model_name_or_path=str(weights), config_name="san-tiny"))


def test_bad_label_error_from_a_dataloader_worker_is_one_line():
    """A DataLoader worker re-raises the error with its traceback in the message; the line printed is the cause."""
    from torch._utils import ExceptionWrapper

    from modeling_pat.apps.data import LabelFileError

    try:
        raise LabelFileError("/data/label/x.png: label value(s) 9 are neither a class index nor the ignore value.")
    except LabelFileError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(LabelFileError) as error:
        wrapper.reraise()
    assert "Traceback" in str(error.value)
    assert runner.data_error_line(error.value) == (
        "/data/label/x.png: label value(s) 9 are neither a class index nor the ignore value.")
    assert runner.data_error_line(LabelFileError("plain message")) == "plain message"


def test_resume_point_named_incomplete_folder_is_a_usage_error_and_last_without_one_starts_over(tmp_path, caplog):
    from types import SimpleNamespace

    incomplete = tmp_path / "checkpoint-3"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(runner.SetupError, match=r"checkpoint-3: incomplete checkpoint \(no trainer_state.json\)"):
        runner.resume_point(SimpleNamespace(resume_from_checkpoint=str(incomplete), output_dir=str(tmp_path)))
    with pytest.raises(runner.SetupError, match="no such folder"):
        runner.resume_point(SimpleNamespace(resume_from_checkpoint=str(tmp_path / "nope"), output_dir=str(tmp_path)))
    with caplog.at_level("WARNING"):
        assert runner.resume_point(SimpleNamespace(resume_from_checkpoint="last", output_dir=str(tmp_path))) is None
    assert "Skipping the incomplete checkpoint" in caplog.text and "training starts from step 0" in caplog.text
    assert runner.resume_point(SimpleNamespace(resume_from_checkpoint=None, output_dir=str(tmp_path))) is None
