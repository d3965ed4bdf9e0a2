"""Export: ``fold_batch_norm`` folds every batch norm that follows a convolution into it, for inference."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from fcndata.backbones import call_without_bn_kwargs
from fcndata.layers import all_layers

def _foldable_pairs(model: keras.Model) -> dict:
    """Maps id(BN layer) -> the Conv2D / DepthwiseConv2D whose only consumer it is.

    Read from each functional model's own config (``get_config()``: every layer's
    ``inbound_nodes`` name the producing layer, node and tensor), a public and
    serialised description of the graph, so no private Keras attribute is touched.
    Nested functional models (keras.applications backbones) are read the same way.
    """
    pairs = {}
    for graph in _all_models(model):
        config = graph.get_config()
        if not isinstance(config, dict) or "layers" not in config:
            continue  # a subclassed or Sequential model: nothing is folded inside it
        producers, consumers, calls = {}, {}, {}
        for entry in config["layers"]:
            nodes = entry.get("inbound_nodes", [])
            calls[entry["name"]] = len(nodes)
            for node in nodes:
                sources = _keras_histories(node)
                if len(nodes) == 1:
                    producers[entry["name"]] = sources
                for source in sources:
                    consumers[source] = consumers.get(source, 0) + 1
        outputs = config.get("output_layers", [])
        if outputs and isinstance(outputs[0], str):
            outputs = [outputs]  # one output: a single [name, node, tensor] triple
        for name, node, index in outputs:
            consumers[(name, node, index)] = consumers.get((name, node, index), 0) + 1
        for entry in config["layers"]:
            layer = graph.get_layer(entry["name"])
            if not isinstance(layer, layers.BatchNormalization) or layer.axis not in (-1, 3):
                continue
            sources = producers.get(entry["name"])
            if not sources or len(sources) != 1:
                continue
            name, node, index = sources[0]
            producer = graph.get_layer(name)
            if (
                type(producer) in (layers.Conv2D, layers.DepthwiseConv2D)
                and calls.get(name) == 1
                and consumers.get((name, node, index)) == 1
                and producer.activation is keras.activations.linear
            ):
                pairs[id(layer)] = producer
    return pairs


def _all_models(model):
    """``model`` and every functional model nested in it."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_models(layer)


def _keras_histories(node) -> list[tuple[str, int, int]]:
    """The (layer, node, tensor) triples a serialised inbound node reads."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                name, node_index, tensor_index = value["config"]["keras_history"]
                found.append((name, node_index, tensor_index))
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(node.get("args", []))
    walk(node.get("kwargs", {}))
    return found


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with each BatchNormalization folded into the conv before it.

    For export: in inference mode ``BN(conv(x)) = conv'(x)`` with
    ``W' = W · γ/√(σ² + ε)`` and ``b' = (b − μ) · γ/√(σ² + ε) + β`` per output channel.
    Folded BN layers become ``Identity`` layers of the same name; a BN that does not
    directly follow a Conv2D / DepthwiseConv2D used only by it is kept. Nested models
    (keras.applications backbones) are folded too. The result is meant for inference:
    it matches ``model(x, training=False)`` to float precision.

    Example:
      >>> from fcndata.models import fcn
      >>> m = fcn(2, "fcn32s", width=2)
      >>> folded = fold_batch_norm(m)
      >>> sum(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
      0
    """
    pairs = _foldable_pairs(model)
    convs = {id(conv) for conv in pairs.values()}
    bn_of_conv = {id(conv): bn_id for bn_id, conv in pairs.items()}
    bn_layers = {id(l): l for l in all_layers(model) if id(l) in pairs}
    clones = []

    def clone(layer):
        if id(layer) in pairs:
            new = layers.Identity(name=layer.name)
        elif id(layer) in convs:
            new = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
        else:
            new = layer.__class__.from_config(layer.get_config())
        clones.append((layer, new))
        return new

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call_without_bn_kwargs, recursive=True)
    for old, new in clones:
        if id(old) in convs:
            bn = bn_layers[bn_of_conv[id(old)]]
            mean = np.asarray(bn.moving_mean.numpy(), np.float64)
            var = np.asarray(bn.moving_variance.numpy(), np.float64)
            gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(mean)
            beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(mean)
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = old.kernel.numpy().astype(np.float64)
            bias = old.bias.numpy().astype(np.float64) if old.use_bias else np.zeros_like(mean)
            if isinstance(old, layers.DepthwiseConv2D):
                *_, cin, mult = kernel.shape
                kernel = kernel * scale.reshape(cin, mult)
            else:
                kernel = kernel * scale
            bias = (bias - mean) * scale + beta
            new.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        elif old.weights and new.weights and not isinstance(old, keras.Model):
            new.set_weights(old.get_weights())
    return folded
