"""Package `distill` (the shared distillation core) and the per-paper project packages.

torch, torchvision and detectron2 are installed by `make install` (tools/install_detectron2.py),
not from here: detectron2 has no installable wheel on the package registry.
"""

from setuptools import find_packages, setup

# Project packages live in projects/<Method>/<pkg>/; each is registered under the
# "distill.projects" entry-point group so that tools/train_net.py imports it for registration.
PROJECT_PACKAGES: dict[str, str] = {
    "lgd": "projects/LGD/lgd",
    "dsig": "projects/Dsig/dsig",
    "sgg": "projects/LSKD/sgg",
}


def project_packages() -> list[str]:
    """Each project package and its subpackages (e.g. ``sgg.data``)."""
    packages = []
    for name, path in PROJECT_PACKAGES.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=path)]
    return packages


setup(
    name="distill",
    version="0.1.0",
    description="Knowledge distillation for object detection and scene graphs on detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=["distill", "distill.*"]) + project_packages(),
    package_dir={name: path for name, path in PROJECT_PACKAGES.items()},
    install_requires=[
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python",
        "termcolor",
        "tensorboard",
        "scikit-image",
        "tqdm",
        "matplotlib",
        "h5py",
    ],
    extras_require={"dev": ["pytest", "pytest-timeout", "ruff"]},
    entry_points={"distill.projects": [f"{name} = {name}" for name in PROJECT_PACKAGES]},
)
