"""Packaging for ml3tf: import packages ``ml3tf``, ``models``, ``tasks`` and the ``ml3tf`` command."""

from setuptools import find_packages, setup

# The verified working set (DESIGN §4). Exact pins: a fresh machine gets what was tested.
CORE = [
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "numpy==2.4.6",
    # The main job writes a PNG plot; the `ml3tf` package itself imports matplotlib lazily.
    "matplotlib==3.11.2",
]
TENSORBOARD = ["tensorboard==2.21.0"]  # only for MetaTrainConfig(tensorboard=True)
CLASSIFICATION = ["scikit-learn==1.9.1"]  # the digits data set of tasks.classification
# RL tasks (TF-Agents bridge in tasks/rl_env.py). TF-Agents 0.19 itself pins an old TFP and gym and
# tf-keras wants `tensorflow` rather than `tensorflow-cpu`, so those two come from
# requirements-rl.txt with `pip install --no-deps` (README "Reinforcement learning", DESIGN §4).
# tf_agents' __init__ imports gin, PIL and gym unconditionally; agent.train() needs tensorboard.
RL = [
    "tensorflow-probability==0.25.0",
    "gymnasium[mujoco]==1.4.0",
    "gin-config==0.5.0",
    "pillow==13.0.0",
    "gym==0.23.0",
    *TENSORBOARD,
]
TEST = [
    *TENSORBOARD,
    *CLASSIFICATION,
    *RL,
    "pytest==9.2.0",
    "nbclient==0.11.0",
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
    "ruff==0.17.6",
]

setup(
    name="ml3tf",
    version="0.1.0",
    description="Meta-Learning via Learned Loss (ML3) on TensorFlow 2 and Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["ml3tf", "ml3tf.*", "models", "models.*", "tasks", "tasks.*"]),
    include_package_data=True,
    # The pretrained zoo (LearnedLoss.pretrained): meta-loss files and their manifest.
    package_data={"models": ["pretrained/*.keras", "pretrained/manifest.json"]},
    install_requires=CORE,
    extras_require={
        "test": TEST,
        "tensorboard": TENSORBOARD,
        "classification": CLASSIFICATION,
        "rl": RL,
    },
    entry_points={"console_scripts": ["ml3tf=ml3tf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
