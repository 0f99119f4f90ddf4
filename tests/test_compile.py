"""`torch.compile(model, fullgraph=True)` of the inference forward with precomputed `class_embeddings`: no graph
breaks (fullgraph raises on any), and the same outputs as eager within 1e-5.

The backend is "aot_eager": it traces forward through dynamo and AOTAutograd exactly as inductor would, without
generating and compiling C++ kernels (minutes on a small CPU machine). What keeps the traced path clean: with
`class_embeddings` given, the text tower and its Python-dict cache are never reached, and the model's data-dependent
input check (NaN / inf in `pixel_values`) is skipped while compiling (`torch.compiler.is_compiling()`).
"""

import pytest
import torch

from modeling_pat import PATConfig, PATForOpenVocabSegmentation


OUTPUTS = ("class_queries_logits", "masks_queries_logits", "mask_embeddings", "text_embeddings")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
def test_compiled_forward_matches_eager(preset):
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(PATConfig.from_preset(preset)).eval()
    embeddings = model.get_class_embeddings(class_names=["cat", "sofa", "floor"])
    other_embeddings = model.get_class_embeddings(class_names=["sky", "road", "tree"])
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for class_embeddings in (embeddings, other_embeddings):  # embeddings are inputs, not baked-in constants
            eager = model(pixel_values=pixel_values, class_embeddings=class_embeddings)
            traced = compiled(pixel_values=pixel_values, class_embeddings=class_embeddings)
            for name in OUTPUTS:
                torch.testing.assert_close(getattr(traced, name), getattr(eager, name), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
