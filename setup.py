import re
from pathlib import Path

from setuptools import setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "mlrsnet_hf" / "version.py").read_text()).group(1)

# the demo and the quality benchmark: bundled / generated real data, schedule-free baselines,
# parameter-free rivals (Prodigy, D-Adaptation, DoG, Mechanic)
BENCH = [
    "scikit-learn>=1.3",
    "mnist1d>=0.0.2",
    "schedulefree>=1.4",
    "prodigyopt>=1.1",
    "dadaptation>=3.2",
    "dog-optimizer>=1.0.3",
    "mechanic-pytorch>=0.0.1",
]
# the PPO LR controller (training it; using a trained one needs only the core)
PPO = ["stable-baselines3>=2.3", "gymnasium>=0.29.1"]
# the documentation site (`make docs`; the test suite builds it with --strict)
DOCS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26", "pymdown-extensions>=10.8"]

setup(
    name="mlrsnet_hf",
    version=version,
    description="Learned, transferable learning-rate schedules (MLR-SNet) for the Hugging Face ecosystem",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # hub_cards/ (the model card templates) lives at the top level and ships inside the package.
    packages=[
        "mlrsnet_hf",
        "mlrsnet_hf.mlrsnet",
        "mlrsnet_hf.lr_controller",
        "mlrsnet_hf.hub_cards",
        "mlrsnet_hf.zoo",
        "mlrsnet_hf.experiments",
        "mlrsnet_hf.experiments.metric_modules",
    ],
    package_dir={"mlrsnet_hf.hub_cards": "hub_cards"},
    # the schedule zoo: one schedule repo per directory (config.json, model.safetensors, README.md, lr_response.png)
    package_data={
        "mlrsnet_hf.hub_cards": ["*.md"],
        "mlrsnet_hf.zoo": ["*/*"],
        "mlrsnet_hf.experiments.metric_modules": ["*/*.py"],
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "datasets>=3.0",
        "accelerate>=1.0",
        "huggingface-hub>=0.34",
        "evaluate>=0.4",
        "safetensors>=0.4.3",
        "matplotlib>=3.7",
        "jinja2>=3.0",
        "numpy",
    ],
    extras_require={
        "bench": BENCH,
        "ppo": PPO,
        "docs": DOCS,
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", *BENCH, *PPO, *DOCS],
    },
    entry_points={"console_scripts": ["mlrsnet=mlrsnet_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
