"""Keeping home: one bundle, two experts and a router (`adapt --home route`, the default).

Every measured way of keeping the home site inside one fine-tuned network (distillation, an L2-SP
anchor, more PBC rehearsal, WiSE-FT mixes) lost the site faster than it kept home: the best kept
96-97% of PBC against the base model's 98.6% (docs/adapt.md). So the adapted bundle holds both
networks in one graph:

    image -> base network (home, unchanged)     -> home probabilities, home pooled features f
          -> fine-tuned network (site)          -> site probabilities, site pooled features
    g     = sigmoid(w . f + b)                   # "this cell is the site's": a logistic regression
    probs = g * site + (1 - g) * home            # on the base's features, PBC training cells
    pool  = g * site_pool + (1 - g) * home_pool  # against the site's cells (labelled + unlabelled)

A home cell is answered by the base network exactly (g ~ 0), a site cell by the fine-tuned one.
The runtime does not change: it sees one model with a probability and a feature output (the
feature output feeds the OOD statistics, fitted on home and site cells through this same graph).
The price is the second network: twice the parameters, the int8 file and the time per cell.
The router's own accuracy on cells it never saw (PBC test, the --validate cells) goes in the
bundle's `site.route` section.
"""

from __future__ import annotations

import numpy as np

from edge_bloodcls.train import infer

ROUTE_C = 1.0  # inverse L2 strength of the router's logistic regression (standardised features)


def pooled(model, spec, px: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model's pooled features (its "pool" layer) for uint8 pixels at model size."""
    return infer.outputs(model, px, spec, batch, layer="pool")


def fit_router(home_features: np.ndarray, site_features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """(w, b) of g = sigmoid(w . f + b): 1 for the site's cells, 0 for home's. Classes weighted
    equally (PBC cells outnumber the site's); the standardisation is folded into w and b so the
    graph needs one Dense layer."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn: the [train] extra, for this fit only

    x = np.concatenate([home_features, site_features]).astype(np.float64)
    y = np.r_[np.zeros(len(home_features)), np.ones(len(site_features))]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=ROUTE_C, class_weight="balanced", max_iter=2000, random_state=seed)
    lr.fit((x - mu) / sd, y)
    w = lr.coef_[0] / sd
    b = float(lr.intercept_[0] - (lr.coef_[0] * mu / sd).sum())
    return w.astype(np.float32), b


def gate(features: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """The router's g for pooled features (what the graph computes), float."""
    return 1 / (1 + np.exp(-(features.astype(np.float64) @ w + b)))


def routed(home, site, w: np.ndarray, b: float, name: str):
    """The one-graph model of the module docstring. `home` and `site` are models with an "image"
    input, a "pool" layer and a softmax output; they are wrapped, not copied."""
    import tf_keras  # [train] extra

    layers = tf_keras.layers
    image = layers.Input(home.input_shape[1:], name="image")
    home_net = tf_keras.Model(home.inputs, [home.get_layer("pool").output, home.outputs[0]], name="home")
    site_net = tf_keras.Model(site.inputs, [site.get_layer("pool").output, site.outputs[0]], name="site")
    home_pool, home_probs = home_net(image)
    site_pool, site_probs = site_net(image)
    router = layers.Dense(1, activation="sigmoid", name="route")
    g = router(home_pool)
    router.set_weights([w.reshape(-1, 1), np.array([b], np.float32)])

    def mix(a, c, what):  # g * a + (1 - g) * c, as plain Keras layers (no Lambda: the file loads safely)
        return layers.Add(name=what)([c, layers.Multiply(name=f"{what}_gated")([g, layers.Subtract()([a, c])])])

    probs = mix(site_probs, home_probs, "probs")
    pool = mix(site_pool, home_pool, "pool")
    # Two outputs: the mixed features feed no probability, so convert takes them from here
    # (convert/export.py: carries_features).
    return tf_keras.Model(image, [probs, pool], name=name)
