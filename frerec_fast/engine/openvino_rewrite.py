"""A rewrite of the RHM's OpenVINO graph that removes its channel splits.

Both halves of a FET-block end in ``conv1x1 -> depthwise 3x3 -> chunk`` along channels:
GDFN's ``dwconv(project_in(x)).chunk(2)`` and MDTA's ``qkv_dwconv(qkv(x)).chunk(3)``.
OpenVINO's CPU plugin turns the chunk into a VariadicSplit that runs its reference
kernel ("ref_bf16", "ref_f32") on the convolution's blocked layout: profiled on the
shipped model, micro-batch 8, 2 cores, that one op took 25 % of the time at fp32 and
bf16 and 30 % at int8, at 64x64 and at 256x256 alike (docs/engines.md).

The rewrite computes each chunk with its own pair of convolutions, holding that
chunk's rows of the two weight tensors, so nothing is split: the same dot products,
the same sums, only without the copy. Chunks of the same conv pair read the same
input, which is small (the block's width, not the expanded one).
"""
from __future__ import annotations

import numpy as np


def split_chunked_convs(model) -> int:
    """Rewrite every ``Convolution -> GroupConvolution -> Slice`` (channel chunks) of an
    OpenVINO model in place, as described above. Returns how many chunks were rewritten.

    Only a static pattern is touched: constant weights, slices along axis 1 with
    constant bounds and step 1, a 1x1 convolution that feeds nothing else and a
    depthwise convolution that feeds nothing but those slices. The model's shapes must be
    static (``reshape`` first): shape arithmetic is constant-folded here.
    """
    import openvino.opset13 as ops
    from openvino import passes

    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())  # slice bounds were ShapeOf arithmetic
    manager.run_passes(model)
    rewritten = 0
    for dw in model.get_ordered_ops():
        pattern = _chunked_pair(dw)
        if pattern is None:
            continue
        conv, w1, w2, chunks = pattern
        ca, da = conv.get_attributes(), dw.get_attributes()
        for sl, a, b in chunks:
            c = ops.convolution(conv.input_value(0), ops.constant(np.ascontiguousarray(w1[a:b])),
                                ca["strides"], ca["pads_begin"], ca["pads_end"], ca["dilations"],
                                ca["auto_pad"])
            d = ops.group_convolution(c, ops.constant(np.ascontiguousarray(w2[a:b])),
                                      da["strides"], da["pads_begin"], da["pads_end"],
                                      da["dilations"], da["auto_pad"])
            # Names keep the layer's path: profiles and NNCF scopes still find them.
            c.set_friendly_name(f"{conv.get_friendly_name()}/chunk_{a}_{b}")
            d.set_friendly_name(f"{dw.get_friendly_name()}/chunk_{a}_{b}")
            sl.output(0).replace(d.output(0))
            rewritten += 1
    return rewritten


def _chunked_pair(dw):
    """(conv, conv weights, depthwise weights, [(slice, start, stop)]) when ``dw`` is a
    depthwise convolution of a 1x1 convolution whose output is only cut into channel
    chunks; else None."""
    if dw.get_type_name() != "GroupConvolution":
        return None
    conv = dw.input_value(0).get_node()
    if conv.get_type_name() != "Convolution" or len(conv.output(0).get_target_inputs()) != 1:
        return None
    w1, w2 = _constant(conv.input_value(1)), _constant(dw.input_value(1))
    if w1 is None or w2 is None or w2.shape[0] != w1.shape[0] or w2.shape[1:3] != (1, 1):
        return None  # not one output channel per group, one group per conv output channel
    chunks = []
    for target in dw.output(0).get_target_inputs():
        sl = target.get_node()
        if sl.get_type_name() != "Slice" or len(sl.input_values()) != 5:
            return None
        start, stop, step, axes = (_constant(sl.input_value(i)) for i in (1, 2, 3, 4))
        if any(v is None or v.size != 1 for v in (start, stop, step, axes)):
            return None
        if int(axes.item()) not in (1, -3) or int(step.item()) != 1:
            return None
        a, b = int(start.item()), min(int(stop.item()), w1.shape[0])
        if not 0 <= a < b:
            return None
        chunks.append((sl, a, b))
    return (conv, w1, w2, chunks) if chunks else None


def _constant(value):
    node = value.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None
