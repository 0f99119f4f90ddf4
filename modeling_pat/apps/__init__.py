"""Applications built on the SAN / PAT model: they import the model and its processors; the model never imports them.

`pipeline` (transformers' image-segmentation pipeline with class names), `sliding_window` and `region_query`
(inference helpers), `cli` / `demo_app` / `onnx_export` (the command lines and the web demo) with `model_loading` and
`result_files` (what they share: loading `--model`, the files written per image), `data`, `training`,
`optimization`, `finetuning` and `evaluation` (training and benchmarks), `conversion` / `pretrained` (official
checkpoints) and `model_card` / `visualization` (what gets written). Nothing is imported here, so that importing one
application loads only what it needs.
"""
