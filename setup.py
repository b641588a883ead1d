"""jaxlab: research layers, a sharded trainer and paper reproductions in JAX/Flax NNX."""
from setuptools import find_packages, setup

EXTRAS = {
    # The notebooks run in the test suite, so the tests need a Jupyter kernel and matplotlib.
    "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "nbclient>=0.10", "nbformat>=5.10",
             "ipykernel>=6", "matplotlib>=3.8"],
    "tb": ["tensorboardX>=2.6"],
    "hf": ["datasets>=2.19"],
    "notebooks": ["jupyterlab>=4", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6",
                  "matplotlib>=3.8"],
    # PyTorch only for the cross-framework benchmark (benchmarks/train_step.py); on a CPU-only
    # machine install the CPU wheel first (e.g. `pip install torch==2.13.0`).
    "bench": ["matplotlib>=3.8", "torch>=2.4"],
}
EXTRAS["dev"] = sorted({dep for name, deps in EXTRAS.items() if name not in ("hf", "bench")
                        for dep in deps})

setup(
    name="jaxlab",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["jaxlab", "jaxlab.*"]),
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "scikit-learn>=1.4",   # the bundled 8x8 digits data set
        "tqdm>=4.66",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["jaxlab=jaxlab.cli:main"]},
)
