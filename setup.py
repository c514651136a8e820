"""Packaging for atss-tf: ATSS (Zhang et al., CVPR 2020) in TensorFlow / Keras 3."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(
    r'^__version__ = "([^"]+)"', Path("atss_tf/__init__.py").read_text(encoding="utf-8"), re.M
).group(1)

setup(
    name="atss-tf",
    version=VERSION,
    description="ATSS object detection (Adaptive Training Sample Selection) in TensorFlow/Keras",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["atss_tf", "atss_tf.*"])
    + ["atss_tf.configs", "atss_tf.configs.ablations"],
    # configs/ stays at the top of the repository and ships inside the package
    # as atss_tf.configs, so a wheel install finds every config.
    package_dir={"atss_tf.configs": "configs"},
    package_data={"atss_tf.configs": ["*.yaml", "ablations/*.yaml"]},
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3.8",
        "numpy",
        "pycocotools",
        "tensorboard",
        "pyyaml",
        "pillow",
        "matplotlib",
    ],
    extras_require={
        # tensorflow-serving-api: the tests read the SavedModel's warm-up
        # records with TF Serving's own protos (the export writes them without it).
        # ai-edge-litert: the LiteRT interpreter the LiteRT export is tested in.
        "dev": [
            "pytest",
            "pytest-xdist",
            "ruff",
            "nbclient",
            "nbformat",
            "ipykernel",
            "tensorflow-serving-api",
            "ai-edge-litert",
        ],
    },
    entry_points={"console_scripts": ["atss-tf=atss_tf.cli:main"]},
)
