"""Plain reference implementations of the CLIP tower's operations, for tests only.

The package keeps one implementation of each operation, the fast one; these are the straightforward forms it must
equal (fp32, 1e-5): every prompt over the whole context, and the recognition head with its whole additive mask,
both through the open_clip blocks' own forward.
"""

import torch
import torch.nn.functional as F

from modeling_pat.clip_tower import build_recognition_attention_mask


def encode_text(tower, input_ids: torch.Tensor) -> torch.Tensor:
    """(prompts, context length) ids -> (prompts, D): each prompt over the whole context with a causal mask."""
    text = tower.text_tower
    length = input_ids.shape[-1]
    x = text.token_embedding(input_ids) + text.positional_embedding[:length]
    causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
    for block in text.transformer.resblocks:
        x = block(x, attn_mask=causal)
    x = text.ln_final(x)
    eot = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
    return F.normalize(eot @ text.text_projection, dim=-1)


def encode_class_names(tower, input_ids: torch.Tensor) -> torch.Tensor:
    """(N, T, context length) ids -> (N, D): mean of the plain template embeddings, re-normalised."""
    num_classes, num_templates, length = input_ids.shape
    embeddings = encode_text(tower, input_ids.reshape(-1, length)).reshape(num_classes, num_templates, -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def recognize(tower, features, attn_biases: list[torch.Tensor], num_queries: int) -> torch.Tensor:
    """OpenAI-layout recognition: every block's own forward on all S tokens with the whole (B * A_clip, S, S) mask."""
    feature_map, cls_token = features.maps[-1], features.cls_tokens[-1]
    grid = feature_map.shape[-2:]
    blocks = tower.recognition_blocks
    masks = [
        build_recognition_attention_mask(bias, grid, tower.num_heads, tower.mask_value, tower.downsample_method)
        for bias in attn_biases
    ]
    masks = masks * len(blocks) if len(masks) == 1 else masks
    patches = feature_map.flatten(2).transpose(1, 2)
    x = torch.cat([cls_token[:, None].expand(-1, num_queries, -1), cls_token[:, None], patches], dim=1)
    for block, mask in zip(blocks, masks):
        x = block(x, attn_mask=mask.to(x.dtype))
    return F.normalize(tower.vision.project(x[:, :num_queries]), dim=-1)
