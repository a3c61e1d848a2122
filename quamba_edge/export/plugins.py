"""Graph pass: the portable int8 Mamba graph -> the same graph with TensorRT plugin nodes.

Per layer, the causal conv1d (Concat/Slice/shifted Mul-Add/SiLU/Q) becomes one `QuambaConv1dSiLU` node
and the selective scan (Softplus, discretisation, the ONNX `Scan` loop or the decode step, D skip, the
SiLU(z) gate) one `QuambaSelectiveScan` node, backed by csrc/tensorrt and csrc/cuda. The exporter
records each region's boundary tensors (metadata `plugin_regions`); this pass removes everything
computed only from those inputs for those outputs, and wires the plugin node to the same names: same
inputs, same outputs. The plugin's constants (int8 conv weights, A_log, D, delta_bias, the scales)
become node attributes, which the TensorRT ONNX parser hands to the plugin creator as fields.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.quant.quamba import QuantizedMambaLM

PLUGIN_NAMESPACE = "quamba_edge"
PLUGIN_VERSION = "1"
PLUGIN_DOMAIN = "quamba_edge"  # TensorRT matches plugins by op type; the domain only keeps the graph valid ONNX


def _int8(t, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(t.numpy().astype(np.int8).reshape(-1), name)


def _conv_attrs(model: QuantizedMambaLM, layer: int) -> dict:
    m = model.layers[layer].mixer
    conv = m.conv1d
    return {"d_inner": model.cfg.d_inner, "width": conv.k, "weight": _int8(conv.weight, "weight"),
            "bias": _int8(conv.bias, "bias"), "weight_scale": conv.weight_scale.reshape(-1).tolist(),
            "scales": [float(m.in_proj.out_scale), float(conv.bias_scale), float(conv.out_scale)]}


def _scan_attrs(model: QuantizedMambaLM, layer: int) -> dict:
    m = model.layers[layer].mixer
    sc = m.scan
    # The scales of the dequantizations the portable graph applies to the plugin's inputs.
    scales = [m.conv1d.out_scale, sc.delta_scale, m.x_proj.out_scale, m.x_proj.out_scale, m.in_proj.out_scale,
              sc.A_log_scale, sc.D_scale, sc.delta_bias_scale]
    return {"d_inner": model.cfg.d_inner, "d_state": model.cfg.d_state, "scales": [float(s) for s in scales],
            **{name: _int8(getattr(sc, name), name) for name in ("A_log", "D", "delta_bias")}}


ATTRIBUTES = {"QuambaConv1dSiLU": _conv_attrs, "QuambaSelectiveScan": _scan_attrs}


def _region_nodes(nodes: list[onnx.NodeProto], inputs: set[str], outputs: list[str]) -> set[int]:
    """Indices of the nodes on some path from the region's inputs to its outputs (walking producers back
    from the outputs, stopping at the inputs and at initializers/graph inputs, which have no producer)."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    region, stack = set(), [producer[o] for o in outputs]
    while stack:
        i = stack.pop()
        if i in region:
            continue
        region.add(i)
        stack.extend(producer[x] for x in nodes[i].input if x and x not in inputs and x in producer)
    return region


def rewrite(proto: onnx.ModelProto, model: QuantizedMambaLM, domain: str = PLUGIN_DOMAIN) -> onnx.ModelProto:
    """A copy of `proto` with every recorded region replaced by its plugin node."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if "plugin_regions" not in meta:
        raise QuambaEdgeError("this graph records no plugin regions: plugins replace parts of an int8 graph "
                              "exported with int8 activations (build-engine --backend tensorrt of a calibrated "
                              "artifact). Fix: export with activations='int8' from a quantized model.")
    out = copy.deepcopy(proto)
    graph = out.graph
    for region in json.loads(meta["plugin_regions"]):
        _replace_region(graph, region, model, domain)
    used = {x for node in graph.node for x in node.input} | {o.name for o in graph.output}
    for attr_graph in (a.g for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH):
        used |= {x for node in attr_graph.node for x in node.input}
    keep = [t for t in graph.initializer if t.name in used]  # drop the initializers only the regions read
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == domain for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(domain, 1))
    next(p for p in out.metadata_props if p.key == "plugin_regions").value = json.dumps(
        {"replaced_by_plugins": True, "domain": domain})
    return out


def _replace_region(graph: onnx.GraphProto, region: dict, model: QuantizedMambaLM, domain: str) -> None:
    nodes = list(graph.node)
    inputs, outputs = set(region["inputs"]), region["outputs"]
    inside = _region_nodes(nodes, inputs, outputs)
    # Nodes whose outputs are also read outside the region stay (with what they read): they are computed
    # from the region's inputs alone, so nothing they need is removed.
    read_outside = {x for i, node in enumerate(nodes) if i not in inside for x in node.input}
    read_outside |= {o.name for o in graph.output}
    keep = {i for i in inside if any(o not in outputs and o in read_outside for o in nodes[i].output)}
    keep |= {j for i in list(keep) for j in _region_nodes(nodes, inputs, list(nodes[i].output))}
    remove = inside - keep
    if not remove:
        raise QuambaEdgeError(f"plugin region {region['plugin']} of layer {region['layer']} is empty")
    plugin = helper.make_node(region["plugin"], region["inputs"], outputs,
                              name=f"layer{region['layer']}/{region['plugin']}", domain=domain,
                              plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION,
                              **ATTRIBUTES[region["plugin"]](model, region["layer"]))
    kept = [n for i, n in enumerate(nodes) if i not in remove]
    # The plugin goes before the first node that reads its outputs, after every node that computes its inputs.
    at = next((i for i, n in enumerate(kept) if set(n.input) & set(outputs)), len(kept))
    if inputs & {o for n in kept[at:] for o in n.output}:
        raise QuambaEdgeError(f"plugin region {region['plugin']} of layer {region['layer']} has an input computed "
                              "after one of its outputs is read")
    del graph.node[:]
    graph.node.extend(kept[:at] + [plugin] + kept[at:])


def plugin_counts(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in proto.graph.node if node.op_type in ATTRIBUTES))
