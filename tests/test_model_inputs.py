"""Input checks where they enter the model (`model_inputs.py`): shapes, dtypes, and values read only on the host."""

import pytest
import torch

from modeling_pat import PATConfig
from modeling_pat.model_inputs import (
    check_input_ids,
    check_labels,
    check_sizes,
    prepare_pixel_values,
    refuse_attention_weights,
)

def test_value_checks_read_only_host_tensors():
    """Finiteness is checked on CPU tensors only: on an accelerator, reading the values would make every forward wait
    for the device. A meta tensor (no values at all) stands in for a device tensor: shape and dtype are still checked,
    values are never read; on the CPU the same tensors are refused."""
    from modeling_pat.model_inputs import check_class_embeddings, prepare_pixel_values

    nan_images = torch.full((1, 3, 64, 64), float("nan"))
    nan_embeddings = torch.full((2, 8), float("nan"))
    assert prepare_pixel_values(nan_images.to("meta"), 32, torch.bfloat16).dtype == torch.bfloat16
    check_class_embeddings(nan_embeddings.to("meta"), 8)
    with pytest.raises(ValueError, match="pixel_values` contains NaN"):
        prepare_pixel_values(nan_images, 32, torch.float32)
    with pytest.raises(ValueError, match="class_embeddings` contains NaN"):
        check_class_embeddings(nan_embeddings, 8)
    with pytest.raises(ValueError, match="must have shape"):
        check_class_embeddings(torch.zeros(2, 4, device="meta"), 8)
    with pytest.raises(TypeError, match="got torch.int32"):
        prepare_pixel_values(torch.zeros(1, 3, 64, 64, dtype=torch.int32, device="meta"), 32, torch.float32)


def test_pixel_values_must_be_padded_to_the_size_divisibility():
    with pytest.raises(ValueError, match=r"\(64, 50\) must be positive multiples of size_divisibility=32"):
        prepare_pixel_values(torch.zeros(1, 3, 64, 50), 32, torch.float32)
    with pytest.raises(ValueError, match=r"\(batch_size, 3, height, width\)"):
        prepare_pixel_values(torch.zeros(3, 64, 64), 32, torch.float32)


def test_input_ids_are_refused_by_shape_length_and_range():
    with pytest.raises(ValueError, match="num_classes, num_templates, seq_len"):
        check_input_ids(torch.zeros(2, 77, dtype=torch.long), vocab_size=10, context_length=77)
    with pytest.raises(ValueError, match="78 tokens long; CLIP's text context holds 77"):
        check_input_ids(torch.zeros(2, 1, 78, dtype=torch.long), vocab_size=10, context_length=77)
    with pytest.raises(ValueError, match=r"\[0, 9\] \(CLIP.s vocabulary\), got values in \[10, 10\]"):
        check_input_ids(torch.full((2, 1, 77), 10), vocab_size=10, context_length=77)
    check_input_ids(torch.full((2, 1, 77), 9), vocab_size=10, context_length=77)  # in range: no error


def test_labels_and_sizes_name_the_expected_shape():
    pixel_values = torch.zeros(2, 3, 32, 64)
    with pytest.raises(ValueError, match=r"\(batch_size, height, width\) = \(2, 32, 64\)"):
        check_labels(torch.zeros(2, 32, 32, dtype=torch.long), pixel_values)
    with pytest.raises(TypeError, match="integer class ids"):
        check_labels(torch.zeros(2, 32, 64), pixel_values)
    with pytest.raises(ValueError, match=r"`image_sizes` must be an integer tensor of shape \(batch_size, 2\) = \(2, 2\)"):
        check_sizes(torch.zeros(3, 2, dtype=torch.long), "image_sizes", 2)
    check_sizes(None, "image_sizes", 2)


def test_attention_weights_are_refused_from_the_argument_or_the_config():
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        refuse_attention_weights(True, PATConfig())
    config = PATConfig()
    config.output_attentions = True
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        refuse_attention_weights(None, config)
    refuse_attention_weights(False, config)  # an explicit False wins over the config
