"""Host-device synchronisations of inference (forward + semantic post-processing), counted without a GPU.

The model runs on the meta device, standing in for an accelerator: a TorchDispatchMode sees every operation and
counts those that make the host wait for the device there (reading a value: item / bool / int / float / tolist;
outputs whose shape depends on values: nonzero, unique, masked_select; copies between host and device, including
host tensors fed to device operations). Host tensors made by the code itself (resize plans) are CPU tensors and
cost nothing. On CUDA the same calls are what `torch.cuda.set_sync_debug_mode` reports, and what keeps a forward out
of a CUDA graph.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import tiny_model
from modeling_pat import PATImageProcessor


VALUE_DEPENDENT = ("aten.nonzero", "aten.unique", "aten._unique", "aten.masked_select", "aten.equal",
                   "aten.is_nonzero", "aten.repeat_interleave")


class HostDeviceSyncCounter(TorchDispatchMode):
    """Records the operations on meta ("device") tensors that would wait for the device, and returns stand-in
    results (ones, no rows) so that one run lists all of them."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type == "meta" for t in tensors)
        to_device = str(kwargs.get("device", "")) == "meta"
        name = str(func)
        if on_device and name == "aten._local_scalar_dense.default":
            self.syncs.append(name)
            value = args[0]
            return True if value.dtype == torch.bool else 1.0 if value.is_floating_point() else 1
        if on_device and name.startswith(VALUE_DEPENDENT):
            self.syncs.append(name)
            if name.startswith("aten.nonzero"):
                return torch.zeros(0, args[0].ndim, dtype=torch.long, device="meta")
            return func(*args, **kwargs)
        # data crossing between host and device: a host tensor with values (not a 0-d scalar) meets a device one
        host_data = any(t.device.type == "cpu" and t.ndim > 0 for t in tensors)
        if (on_device or to_device) and host_data:
            self.syncs.append(name)
        if on_device and name == "aten._to_copy.default" and str(kwargs.get("device", "")) == "cpu":
            self.syncs.append(name)  # device -> host
            return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        return func(*args, **kwargs)


def count_syncs(call) -> list[str]:
    """The syncs of `call()`. `torch.tensor(data, device=...)` / `torch.as_tensor` copy host data to the device below
    the dispatcher, so they are counted by wrapping them."""
    counter = HostDeviceSyncCounter()

    def from_host(make):
        def wrapped(data, *args, **kwargs):
            if str(kwargs.get("device", "")).startswith("meta") and not isinstance(data, torch.Tensor):
                counter.syncs.append(f"torch.{make.__name__}(host data, device=...)")
            return make(data, *args, **kwargs)
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "tensor", from_host(torch.tensor))
        patch.setattr(torch, "as_tensor", from_host(torch.as_tensor))
        with torch.no_grad(), counter:  # (inference_mode would hide item() from the mode)
            call()
    return counter.syncs


def test_counter_sees_every_kind_of_sync():
    """Positive control: each of these waits for the device on CUDA."""
    x = torch.ones(3, 4, device="meta")
    calls = [
        lambda: x.sum().item(), lambda: bool(x.any()), lambda: int(x[0, 0]), lambda: x.tolist(),
        lambda: x.nonzero(), lambda: x.cpu(), lambda: torch.ones(3).to("meta"),
        lambda: x.new_zeros(3).copy_(torch.ones(3)), lambda: x[torch.tensor([0, 2])],
        lambda: torch.tensor([[128, 160]], device="meta"),
    ]
    assert [len(count_syncs(call)) for call in calls] == [1] * len(calls)
    assert count_syncs(lambda: x * torch.tensor(2.0) + torch.arange(4, device="meta")) == []  # 0-d host scalar


@pytest.fixture(scope="module", params=["san-tiny", "pat-tiny"])
def meta_run(request):
    """A tiny SAN (or PAT) on the meta device, its class embeddings there, a batch of two 128 x 160 images."""
    model = tiny_model(preset=request.param)
    with torch.inference_mode():
        embeddings = model.get_class_embeddings(class_names=["sky", "tree", "road", "person", "car"])
    return model.to("meta"), embeddings.clone().to("meta"), torch.empty(2, 3, 128, 160, device="meta")


def infer(meta_run, image_sizes=None, num_classes=None, prune=None):
    model, embeddings, pixel_values = meta_run
    if num_classes is not None:
        embeddings = embeddings[:1].expand(num_classes, -1)
    processor = PATImageProcessor(do_resize=False)

    def call():
        outputs = model(pixel_values, class_embeddings=embeddings, image_sizes=image_sizes)
        if prune is not None:  # semantic_map's `prune`, through the processor
            from modeling_pat import image_processing_pat

            original = image_processing_pat.semantic_map
            image_processing_pat.semantic_map = lambda *a, **k: original(*a, **k, prune=prune)
            try:
                return processor.post_process_semantic_segmentation(outputs, target_sizes=[(100, 150), (120, 90)])
            finally:
                image_processing_pat.semantic_map = original
        return processor.post_process_semantic_segmentation(outputs, target_sizes=[(100, 150), (120, 90)])
    return call


def test_forward_and_post_processing_never_wait_for_the_device(meta_run):
    """The processor's image sizes (host tensors) in, label maps out: no synchronisation once the resize plans of
    these sizes are on the device (the first call copies them there, as CUDA-graph warm-up runs do)."""
    call = infer(meta_run, image_sizes=torch.tensor([[128, 150], [100, 160]]))
    count_syncs(call)  # warm-up: the resize plans of these sizes go to the device
    assert count_syncs(call) == []
    maps = call()
    assert [m.device.type for m in maps] == ["meta", "meta"] and [m.shape for m in maps] == [(100, 150), (120, 90)]


def test_image_sizes_on_the_device_are_read_once(meta_run):
    """Sizes moved to the device with the inputs: one transfer for the whole table, not one per number."""
    call = infer(meta_run, image_sizes=torch.tensor([[128, 150], [100, 160]], device="meta"))
    count_syncs(call)
    assert count_syncs(call) == ["aten._to_copy.default"]


def test_device_pruning_reads_one_candidate_count_per_band(meta_run):
    """From DEVICE_PRUNE_MIN_CLASSES classes on, the device prunes classes per band (one nonzero each, one band per
    image here); pruning switched off, that vocabulary is synchronisation-free too."""
    from modeling_pat.image_processing_pat import DEVICE_PRUNE_MIN_CLASSES

    call = infer(meta_run, num_classes=DEVICE_PRUNE_MIN_CLASSES)
    count_syncs(call)
    assert count_syncs(call) == ["aten.nonzero.default"] * 2
    unpruned = infer(meta_run, num_classes=DEVICE_PRUNE_MIN_CLASSES, prune=False)
    count_syncs(unpruned)
    assert count_syncs(unpruned) == []
