from setuptools import find_packages, setup

setup(
    name="bart_ext",
    version="0.1.0",
    description="NVIDIA's BART pretraining recipe as fairseq plugins: Pre-LN BART, denoising, NVLAMB",
    packages=find_packages(include=["bart_ext", "bart_ext.*"]),
    package_data={"bart_ext": ["csrc/*.c"]},
    python_requires=">=3.10",
)
