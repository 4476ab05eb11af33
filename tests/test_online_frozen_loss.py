"""OnlineLossLearning started from a given loss: fit trains the model, never the loss network φ."""

import keras
import numpy as np

import ml3tf
from ml3tf.losses import default_meta_loss


def test_a_given_loss_network_is_frozen_for_fit():
    """A copy of a frozen network (``loss=LearnedLoss``) keeps no trainable sub-layer: with
    ``every=0`` φ never changes and training equals plain ``fit`` on the same loss."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((64, 4)).astype("float32")
    y = (x.sum(1) > 2).astype("int64")
    net = default_meta_loss("classification", 2, (8,))
    loss = ml3tf.LearnedLoss(net, kind="classification", from_logits=True)

    def learner():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    model = learner()
    online = ml3tf.OnlineLossLearning(model, "classification", loss=loss, every=0)
    assert [v.path for v in online.trainable_variables] == [v.path for v in model.trainable_variables]
    before = online.meta_loss_network.get_weights()
    online.compile(optimizer=keras.optimizers.SGD(0.5))
    online.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(before, online.meta_loss_network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    plain = learner()
    plain.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not any(layer.trainable for layer in online.learned_loss().network._flatten_layers())
