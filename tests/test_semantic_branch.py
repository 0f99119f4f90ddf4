"""Semantic branch units: hypersphere attention (H1), token mixer (T1), global-token attention (G1), Eq. 2 stages."""

import pytest
import torch
import torch.nn.functional as F

from modeling_pat.configuration_pat import PATConfig
from modeling_pat.constants import PYRAMID_STAGES
from modeling_pat.semantic_branch import (
    PATHypersphereAttention,
    PATSemanticBranch,
    PATTokenMixer,
)


# PAT ViT-B/16 at 640x640 (architecture.md section 3.14)
SIZES, D, C, Q, L = (128, 64, 32), 32, 240, 100, 1600


def explicit_hsattn(attn: PATHypersphereAttention, queries, keys):
    """The formula written out: normalize(softmax(kappa q^ k^T) v), or softmax(q k^T / sqrt(d)) v without vMF."""
    q, k, v = attn.q_proj(queries), attn.k_proj(keys), attn.v_proj(keys)
    if not attn.use_vmf:
        return torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v
    logits = attn.kappa * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(1, 2)
    return F.normalize(torch.softmax(logits, dim=-1) @ v, dim=-1)


def identity_hsattn(dim: int, kappa: float) -> PATHypersphereAttention:
    """HSAttn whose projections are the identity, so keys = values = the inputs."""
    attn = PATHypersphereAttention(dim, dim, dim, kappa=kappa)
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
    return attn


@pytest.mark.parametrize("use_vmf", [True, False])
def test_hsattn_matches_explicit_formula(use_vmf):
    torch.manual_seed(0)
    attn = PATHypersphereAttention(D, C, D, kappa=30.0, use_vmf=use_vmf).double()
    queries, keys = torch.randn(2, 16, D, dtype=torch.float64), torch.randn(2, 50, C, dtype=torch.float64)
    out = attn(queries, keys)
    assert out.shape == (2, 16, D)
    torch.testing.assert_close(out, explicit_hsattn(attn, queries, keys), rtol=1e-10, atol=1e-10)


def test_hsattn_output_on_sphere_only_with_vmf():
    torch.manual_seed(0)
    queries, keys = torch.randn(2, 16, D), torch.randn(2, 50, C)
    vmf = PATHypersphereAttention(D, C, D)(queries, keys)
    torch.testing.assert_close(vmf.norm(dim=-1), torch.ones(2, 16))
    plain = PATHypersphereAttention(D, C, D, use_vmf=False)(queries, keys)
    assert not torch.allclose(plain.norm(dim=-1), torch.ones(2, 16), atol=1e-2)


def test_hsattn_mean_shift_moves_query_to_its_cluster_mean():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(2, 8), dim=-1)
    # two tight clusters on the sphere; the query sits near cluster a
    keys = torch.cat([a + 0.05 * torch.randn(20, 8), b + 0.05 * torch.randn(20, 8)])[None]
    query = (a + 0.1 * torch.randn(8))[None, None]
    out = identity_hsattn(8, kappa=30.0)(query, keys)[0, 0]
    cluster_mean = F.normalize(keys[0, :20].mean(0), dim=0)
    assert torch.dot(out, cluster_mean) > 0.999
    assert torch.dot(out, cluster_mean) > torch.dot(F.normalize(query[0, 0], dim=0), cluster_mean)


def test_hsattn_large_kappa_concentrates_on_most_similar_key():
    torch.manual_seed(0)
    keys, query = torch.randn(1, 30, 8), torch.randn(1, 1, 8)
    nearest = (F.normalize(keys[0], dim=-1) @ F.normalize(query[0, 0], dim=0)).argmax()
    out = identity_hsattn(8, kappa=1e4)(query, keys)[0, 0]
    torch.testing.assert_close(out, F.normalize(keys[0, nearest], dim=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "num_in, num_out, in_dim, out_dim, projects",
    [(128, 64, D, D, False), (64, 32, D, D, False), (32, Q, D, C, True)],
)
def test_token_mixer_maps_token_counts_and_projects_channels_only_when_needed(
    num_in, num_out, in_dim, out_dim, projects
):
    mixer = PATTokenMixer(num_in, num_out, in_dim, out_dim)
    assert mixer(torch.randn(2, num_in, in_dim)).shape == (2, num_out, out_dim)
    assert isinstance(mixer.channel_proj, torch.nn.Linear) == projects
    assert isinstance(mixer.channel_proj, torch.nn.Identity) == (not projects)
    assert (mixer.fc1.in_features, mixer.fc1.out_features, mixer.fc3.out_features) == (num_in, 256, num_out)


def test_token_mixer_mixes_along_tokens_not_channels():
    mixer = PATTokenMixer(6, 4, 5, 5, hidden_dim=8)
    tokens = torch.randn(1, 6, 5)
    perturbed = tokens.clone()
    perturbed[:, :, 2] += 1.0  # one channel of every token
    diff = (mixer(perturbed) - mixer(tokens)).abs().amax(dim=(0, 1))
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3, 4]] == 0)


def stage_inputs(branch: PATSemanticBranch, seed: int = 0):
    """Random codebooks (K_s, D), side tokens z_s (1, L, C) and global tokens (1, Q, C) for the three stages."""
    g = torch.Generator().manual_seed(seed)
    codebooks = [torch.randn(k, D, generator=g) for k in SIZES]
    side = [torch.randn(1, L, C, generator=g) for _ in SIZES]
    return codebooks, side, torch.randn(1, Q, C, generator=g)


def run_stages(branch: PATSemanticBranch, codebooks, side, global_tokens):
    """All three stages in order, as the side ViT calls them; returns the local tokens and final global tokens."""
    locals_, previous = [], None
    for stage, name in enumerate(PYRAMID_STAGES):
        previous, global_tokens = branch.forward_stage(name, codebooks[stage], previous, side[stage], global_tokens)
        locals_.append(previous)
    return locals_, global_tokens


@pytest.mark.parametrize("use_token_mixer", [True, False])
def test_semantic_branch_stage_shapes_for_pat_vit_b(use_token_mixer):
    torch.manual_seed(0)
    branch = PATSemanticBranch(PATConfig(use_token_mixer=use_token_mixer)).eval()
    assert (branch.local_mixers is None) == (branch.global_mixers is None) == (not use_token_mixer)
    if use_token_mixer:
        assert set(branch.local_mixers) == {"mid", "late"} and set(branch.global_mixers) == {"early", "mid", "late"}
    codebooks, side, global_tokens = stage_inputs(branch)
    with torch.no_grad():
        locals_, out = run_stages(branch, codebooks, side, global_tokens)
    for local, k in zip(locals_, SIZES):
        assert local.shape == (1, k, D)
        torch.testing.assert_close(local.norm(dim=-1), torch.ones(1, k))
    assert out.shape == (1, Q, C)


def test_without_token_mixer_global_tokens_change_only_through_attention():
    torch.manual_seed(0)
    branch = PATSemanticBranch(PATConfig(use_token_mixer=False)).eval()
    codebooks, side, global_tokens = stage_inputs(branch)
    with torch.no_grad():
        local, out = branch.forward_stage("mid", codebooks[1], torch.randn(1, 128, D), side[1], global_tokens)
        torch.testing.assert_close(out, branch.global_attn["mid"](global_tokens, side[1]), rtol=0, atol=0)
        # no flow between stages either: the previous local tokens are ignored
        torch.testing.assert_close(local, branch.forward_stage("mid", codebooks[1], None, side[1], global_tokens)[0])


def test_token_mixer_feeds_local_tokens_into_global_tokens_and_next_stage():
    torch.manual_seed(0)
    branch = PATSemanticBranch(PATConfig()).eval()
    codebooks, side, global_tokens = stage_inputs(branch)
    with torch.no_grad():
        local, out = branch.forward_stage("early", codebooks[0], None, side[0], global_tokens)
        mixed = global_tokens + branch.global_mixers["early"](local)
        torch.testing.assert_close(out, branch.global_attn["early"](mixed, side[0]))
        mid_a = branch.forward_stage("mid", codebooks[1], local, side[1], global_tokens)[0]
        mid_b = branch.forward_stage("mid", codebooks[1], torch.randn_like(local), side[1], global_tokens)[0]
    assert not torch.allclose(mid_a, mid_b)
    with pytest.raises(ValueError, match="previous stage"):
        branch.forward_stage("mid", codebooks[1], None, side[1], global_tokens)


@pytest.mark.parametrize("use_token_mixer", [True, False])
def test_no_information_flows_from_global_to_local_tokens(use_token_mixer):
    torch.manual_seed(0)
    branch = PATSemanticBranch(PATConfig(use_token_mixer=use_token_mixer)).eval()
    codebooks, side, global_tokens = stage_inputs(branch)
    with torch.no_grad():
        locals_a, out_a = run_stages(branch, codebooks, side, global_tokens)
        locals_b, out_b = run_stages(branch, codebooks, side, global_tokens + torch.randn_like(global_tokens))
    assert not torch.allclose(out_a, out_b)
    for a, b in zip(locals_a, locals_b):
        assert torch.equal(a, b)


def test_semantic_branch_uses_vmf_flag_and_kappa_from_config():
    branch = PATSemanticBranch(PATConfig(use_vmf=False, hsattn_kappa=12.0))
    assert all(not m.use_vmf and m.kappa == 12.0 for m in branch.hsattn.values())
    assert list(branch.hsattn) == ["early", "mid", "late"]
