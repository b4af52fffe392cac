"""slurm-k8s-bridge: unchanged sbatch/srun workflows, run as Kubernetes Jobs on shared GPU nodes.

``pip install .`` needs no Slurm headers: the Slurm plugins are compiled later, on the
Slurm host, by ``slurm-k8s-bridge plugins install`` (the C sources ship inside the package).
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithCSources(build_py):
    """Ship csrc/ (and the inventory ResumeProgram) inside the package, so ``plugins install``
    and ``slurm-conf`` work from an installed copy."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "slurm_k8s_bridge" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((HERE / "csrc").glob("*.[ch]")):
            self.copy_file(str(src), str(target / src.name))
        # slurm.conf's ResumeProgram for the inventory nodes (slurm-k8s-bridge slurm-conf)
        data = Path(self.build_lib) / "slurm_k8s_bridge" / "slurm_plugins"
        data.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(HERE / "slurm_plugins" / "inventory-resume.sh"),
                       str(data / "inventory-resume.sh"))


setup(
    name="slurm-k8s-bridge",
    version="0.1.0",
    description="Run unchanged Slurm jobs (sbatch/srun/squeue) as Kubernetes Jobs on shared GPU nodes",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    package_dir={"": "src"},
    # the bridge only: the development cluster (src/slurm_k8s_devcluster) is a test harness,
    # importable from a source checkout (pip install -e .), never shipped in a wheel
    packages=find_packages("src", include=["slurm_k8s_bridge", "slurm_k8s_bridge.*"]),
    include_package_data=True,
    install_requires=[
        "cffi>=1.16",
        "kubernetes>=28",
        "pyyaml>=6",
        "tenacity>=8",
        # cffi compiles the plugins with setuptools, which Python 3.12+ venvs lack
        "setuptools; python_version >= '3.12'",
    ],
    extras_require={
        "test": ["pytest>=7", "docker>=7", "wheel", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["slurm-k8s-bridge=slurm_k8s_bridge.cli:main"]},
    cmdclass={"build_py": BuildWithCSources},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
