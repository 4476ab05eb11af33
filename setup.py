"""Packaging for ml3tf: import packages ``ml3tf``, ``ml3tf.models``, ``ml3tf.tasks``; the ``ml3tf`` command.

The repository keeps ``models/`` and ``tasks/`` at its top level; ``package_dir`` installs them as
``ml3tf.models`` and ``ml3tf.tasks`` (editable and wheel installs alike), so nothing named plain
``models`` or ``tasks`` lands on a user's ``sys.path``.

Dependencies are *ranges*: from the oldest versions CI tests (TensorFlow 2.20, the newest
``tensorflow-tpu``) up to the next minor/major release nobody has tested. The exact set CI tests
lies in ``constraints.txt``; the README's commands install with ``-c constraints.txt``.

TensorFlow itself comes from an extra, so that ml3tf never replaces the TensorFlow a user
already has (a GPU or TPU build):

    pip install "ml3tf[cpu]"   # tensorflow-cpu
    pip install "ml3tf[gpu]"   # tensorflow[and-cuda] (Linux, NVIDIA)
    pip install "ml3tf[tpu]"   # tensorflow-tpu (Cloud TPU VMs, Colab TPU runtimes)
    pip install ml3tf          # TensorFlow is already installed
"""

import re

from setuptools import setup

# One version: ml3tf.__version__ (read, not imported: importing ml3tf needs TensorFlow).
with open("ml3tf/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

TF = ">=2.20,<2.22"  # tested: 2.20 (oldest, tensorflow-tpu's newest) and 2.21
CORE = [
    # Keras 3 that pairs with TF 2.20/2.21; ml3tf never imports tf.keras.
    "keras>=3.10,<4",
    "numpy>=1.26.4,<3",  # the oldest CI tests (constraints-oldest.txt); 1.x and 2.x
    # The main job writes a PNG plot; the `ml3tf` package itself imports matplotlib lazily.
    "matplotlib>=3.8,<4",
]
TENSORBOARD = ["tensorboard>=2.20,<2.22"]  # only for MetaTrainConfig(tensorboard=True)
CLASSIFICATION = ["scikit-learn>=1.4,<2"]  # the digits data set of ml3tf.tasks.classification
# RL tasks (TF-Agents bridge in tasks/rl_env.py). TF-Agents 0.19 itself pins an old TFP and gym, and
# tf-keras wants `tensorflow` rather than `tensorflow-cpu`, so those two come from
# requirements-rl.txt with `pip install --no-deps` (README "Reinforcement learning").
# tf_agents' __init__ imports gin, PIL and gym unconditionally; agent.train() needs tensorboard.
RL = [
    "tensorflow-probability>=0.25,<0.26",
    "gymnasium[mujoco]>=1.1,<2",
    "gin-config>=0.5,<0.6",
    "pillow>=10",
    "gym==0.23.0",  # tf_agents imports it; newer gym releases break on numpy 2
    *TENSORBOARD,
]
# bench/own_data.py: MNIST-1D generated locally by the mnist1d package (make_dataset; no download).
# bench/peers.py: the same meta-step in PyTorch (torch.func; higher, the authors' stack) and JAX.
# Only here: ml3tf itself and its tests never import them.
BENCH = [
    *CLASSIFICATION,
    "mnist1d>=0.0.2,<0.1",
    "torch>=2.4,<3",  # torch.func with nested grad/vmap; the CPU wheel is enough
    "higher>=0.2.1,<0.3",
    "jax>=0.4.30,<0.11",
    "jaxlib>=0.4.30,<0.11",
]
TEST = [
    *CLASSIFICATION,
    "pytest>=8",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "ruff>=0.15",
    "build>=1.2",
]

setup(
    name="ml3tf",
    version=VERSION,
    description="Meta-Learning via Learned Loss (ML3) on TensorFlow 2 and Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["ml3tf", "ml3tf.models", "ml3tf.tasks"],
    package_dir={"ml3tf": "ml3tf", "ml3tf.models": "models", "ml3tf.tasks": "tasks"},
    # The pretrained zoo (LearnedLoss.pretrained): meta-loss files and their manifest,
    # and the MJCF of the authors' reacher robot (ml3tf.tasks.reacher_robot_env).
    package_data={
        "ml3tf.models": ["pretrained/*.keras", "pretrained/manifest.json"],
        "ml3tf.tasks": ["assets/*.xml"],
    },
    include_package_data=False,
    install_requires=CORE,
    extras_require={
        "cpu": [f"tensorflow-cpu{TF}"],
        "gpu": [f"tensorflow[and-cuda]{TF}"],
        "tpu": ["tensorflow-tpu>=2.20,<2.21"],  # tensorflow-tpu's newest release is 2.20
        "tensorboard": TENSORBOARD,
        "classification": CLASSIFICATION,
        "rl": RL,
        "bench": BENCH,
        # Everything the test suite runs beside TensorFlow (pick it with cpu/gpu/tpu): RL, notebooks, lint.
        "test": [*TENSORBOARD, *RL, *TEST],
    },
    entry_points={"console_scripts": ["ml3tf=ml3tf.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
