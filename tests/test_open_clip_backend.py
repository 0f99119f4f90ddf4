"""The open_clip backend: the one module that imports open_clip, its refusals, its fused block run and tokenizer."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import modeling_pat
from modeling_pat.open_clip_backend import (
    build_open_clip_model,
    check_sdpa_blocks,
    clip_tokenizer_from_open_clip,
    full_recognition_mask,
    is_open_clip_architecture,
    load_clip_weights,
    pretrained_clip_weights,
    sdpa_block_forward,
    tokenize,
    vision_tower_view,
)

from conftest import tiny_config


def _imports_open_clip(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(name.split(".")[0] == "open_clip" for name in names):
            return True
    return False


def test_only_the_backend_imports_open_clip_in_the_package():
    package = Path(modeling_pat.__file__).parent
    importing = {path.name for path in package.rglob("*.py") if _imports_open_clip(path)}
    assert importing == {"open_clip_backend.py"}


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_open_clip_model(tiny_config()).eval()


def test_text_block_runs_causal_through_sdpa_as_its_own_forward(clip):
    block = clip.transformer.resblocks[0]
    x = torch.randn(3, 9, block.attn.embed_dim, generator=torch.Generator().manual_seed(1))
    causal = torch.full((9, 9), float("-inf")).triu(1)
    with torch.no_grad():
        torch.testing.assert_close(sdpa_block_forward(block, x, [(0, 9, None, True)]), block(x, attn_mask=causal),
                                   rtol=0, atol=1e-5)


def test_the_fused_run_skips_forward_hooks_on_the_block_as_documented(clip):
    block, seen = clip.visual.transformer.resblocks[0], []
    handles = [block.register_forward_hook(lambda *a: seen.append("block")),
               block.mlp.register_forward_hook(lambda *a: seen.append("mlp"))]
    try:
        with torch.no_grad():
            sdpa_block_forward(block, torch.randn(1, 5, block.attn.embed_dim), [(0, 5, None, False)])
    finally:
        for handle in handles:
            handle.remove()
    assert seen == ["mlp"]


def test_blocks_the_fused_run_cannot_model_are_refused_at_build_time():
    clip = build_open_clip_model(tiny_config())
    block = clip.visual.transformer.resblocks[0]
    width = block.attn.embed_dim
    block.attn = nn.MultiheadAttention(width, 2, batch_first=True, add_zero_attn=True)
    with pytest.raises(NotImplementedError, match="image tower.*ResidualAttentionBlock"):
        check_sdpa_blocks([block], "image tower")
    with pytest.raises(NotImplementedError, match="ResidualAttentionBlock"):
        vision_tower_view(clip.visual)
    with pytest.raises(NotImplementedError, match="Unsupported CLIP image tower Linear"):
        vision_tower_view(nn.Linear(2, 2))


def test_full_recognition_mask_stacks_the_two_row_groups():
    sos = torch.randn(2, 3, 4, 10)
    other = torch.randn(1, 1, 1, 10)
    mask = full_recognition_mask(sos, other)
    assert mask.shape == (2, 3, 10, 10)
    assert torch.equal(mask[:, :, :4], sos) and torch.equal(mask[1, 2, 4:], other[0, 0].expand(6, 10))


def test_tokenizer_reproduces_open_clips_ids_and_knows_its_architectures():
    prompts = ["a photo of a cat.", "There's a <b>large</b> sofa in the scene!"]
    tokenizer = clip_tokenizer_from_open_clip("ViT-B-16")
    ids = tokenize(prompts, 77)
    for row, prompt in enumerate(prompts):
        length = int(ids[row].argmax()) + 1
        assert ids[row, :length].tolist()[1:-1] == tokenizer(prompt.lower(), add_special_tokens=False)["input_ids"]
    assert is_open_clip_architecture("ViT-B-16") and not is_open_clip_architecture("no-such-clip")
    with pytest.raises(ValueError, match="no-such-clip"):
        clip_tokenizer_from_open_clip("no-such-clip")


def test_pretrained_clip_weights_refuse_unknown_tags_and_other_architectures():
    with pytest.raises(ValueError, match=r"no pretrained weights 'no-such-tag' for 'ViT-B-16' \(available: \["):
        pretrained_clip_weights("ViT-B-16", "no-such-tag")
    with pytest.raises(ValueError, match="not open_clip's 'ViT-B-16' architecture"):
        pretrained_clip_weights("ViT-B-16", "openai", clip_config={"embed_dim": 8})


def test_pretrained_clip_weights_that_cannot_be_fetched_are_an_oserror_naming_the_cause(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise ConnectionError("the Hub is not reachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(OSError, match="ConnectionError: the Hub is not reachable"):
        pretrained_clip_weights("ViT-B-16", "openai")


def test_load_clip_weights_loads_an_open_clip_checkpoint_strictly(tmp_path):
    from conftest import tiny_model

    donor, model = tiny_model(seed=1).model.clip_tower.clip, tiny_model(seed=2).model.clip_tower.clip
    torch.save(donor.state_dict(), tmp_path / "clip.bin")
    load_clip_weights(model, str(tmp_path / "clip.bin"))
    assert all(torch.equal(a, b) for a, b in zip(donor.state_dict().values(), model.state_dict().values()))
    torch.save({"unexpected": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(RuntimeError):
        load_clip_weights(model, str(tmp_path / "other.bin"))
