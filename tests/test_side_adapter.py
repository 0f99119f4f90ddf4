"""Side adapter units: shapes from the config, SAN's positional quirks, fusion, and running the side ViT in steps."""

import pytest
import torch

from modeling_pat.side_adapter import PATFusionLayer, PATSideAdapter

from conftest import tiny_config


def clip_maps(config, grid=(4, 5), batch=2):
    width = config.clip_config["vision_cfg"]["width"]
    return [torch.randn(batch, width, *grid) for _ in range(config.clip_feature_layers + 1)]


def test_outputs_shapes_follow_config_for_non_square_input():
    config = tiny_config()
    torch.manual_seed(0)
    adapter = PATSideAdapter(config, clip_channels=64)
    for p in (adapter.pos_embed, adapter.query_embed, adapter.query_pos_embed):
        torch.nn.init.normal_(p, std=0.02)
    pixels = torch.randn(2, 3, 128, 160)
    output = adapter(pixels, clip_maps(config))
    outputs, hidden, terms = output.levels, output.hidden_states, output.fusion_terms
    assert sorted(terms) == sorted(config.fusion_side_layers)
    grid = (128 // config.side_patch_size, 160 // config.side_patch_size)
    assert len(outputs) == len(config.deep_supervision_layers)
    for out in outputs:
        assert out.queries.shape == (2, config.num_queries, config.side_hidden_size)
        assert out.side_tokens.shape == (2, config.side_hidden_size, *grid)
    assert len(hidden) == config.side_num_hidden_layers + 1
    # the outputs are the hidden states of the supervision blocks (after fusion, before the position re-add)
    last = hidden[config.deep_supervision_layers[-1]]
    torch.testing.assert_close(outputs[-1].queries, last[:, : config.num_queries])


def test_positional_table_resized_only_when_token_count_differs():
    config = tiny_config()  # 8x8 table
    adapter = PATSideAdapter(config, clip_channels=64)
    torch.nn.init.normal_(adapter.pos_embed)
    torch.nn.init.normal_(adapter.query_pos_embed)
    same_count = adapter.positional_embedding((4, 16))  # 64 tokens, other shape: SAN reuses the table as is
    torch.testing.assert_close(same_count[:, config.num_queries :], adapter.pos_embed)
    resized = adapter.positional_embedding((8, 10))
    assert resized.shape == (1, config.num_queries + 80, config.side_hidden_size)
    torch.testing.assert_close(resized[:, : config.num_queries], adapter.query_pos_embed)


def test_fusion_touches_patch_tokens_only():
    config = tiny_config()
    adapter = PATSideAdapter(config, clip_channels=64)
    x = torch.randn(2, config.num_queries + 64, config.side_hidden_size)
    fused, term = adapter.fuse(0, x, clip_maps(config, grid=(4, 4)), (8, 8))
    torch.testing.assert_close(fused[:, : config.num_queries], x[:, : config.num_queries])
    torch.testing.assert_close(fused[:, config.num_queries :] - x[:, config.num_queries :], term.flatten(2).transpose(1, 2))
    unfused_position = max(config.fusion_side_layers) + 1
    unfused, no_term = adapter.fuse(unfused_position, x, clip_maps(config), (8, 8))
    assert unfused is x and no_term is None


def test_fusion_layer_projects_then_resizes_bilinearly():
    layer = PATFusionLayer(16, 8)
    clip_map = torch.randn(1, 16, 3, 3)
    term = layer(clip_map, (6, 6))
    assert term.shape == (1, 8, 6, 6)
    expected = torch.nn.functional.interpolate(layer.proj(layer.norm(clip_map)), size=(6, 6), mode="bilinear")
    torch.testing.assert_close(term, expected)


def _adapter(config):
    torch.manual_seed(0)
    adapter = PATSideAdapter(config, clip_channels=64)
    for p in (adapter.pos_embed, adapter.query_embed, adapter.query_pos_embed):
        torch.nn.init.normal_(p, std=0.02)
    return adapter


def test_steps_without_changes_equal_one_forward():
    config = tiny_config()
    adapter, pixels, maps = _adapter(config), torch.randn(2, 3, 128, 160), clip_maps(config)
    whole = adapter(pixels, maps)
    state = adapter.start(pixels, maps)
    for position in (1, 1, 3):  # a repeated stop runs nothing
        adapter.run(state, position)
    stepped = adapter.finish(state)
    assert len(stepped.hidden_states) == len(whole.hidden_states)
    for a, b in zip(stepped.hidden_states, whole.hidden_states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [level.side_tokens.shape for level in stepped.levels] == [level.side_tokens.shape for level in whole.levels]


def test_run_returns_the_side_tokens_before_fusion_and_queries_can_be_replaced():
    config = tiny_config()
    adapter, pixels, maps = _adapter(config), torch.randn(1, 3, 128, 160), clip_maps(config, batch=1)
    position = config.fusion_side_layers[1]  # a fused block: before and after fusion differ
    state = adapter.start(pixels, maps)
    before = adapter.run(state, position)
    q = config.num_queries
    term = state.output.fusion_terms[position].flatten(2).transpose(1, 2)
    torch.testing.assert_close(state.x[:, q:], before + term)
    new_queries = torch.zeros(1, q, config.side_hidden_size)
    adapter.set_queries(state, new_queries)
    torch.testing.assert_close(adapter.queries(state), new_queries)
    output = adapter.finish(state)
    torch.testing.assert_close(output.hidden_states[position][:, :q], new_queries)  # recorded after the change
    with pytest.raises(ValueError, match="forward only"):
        adapter.run(state, 1)
