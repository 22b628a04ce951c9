"""Dataset-scale Integrated Gradients on Apache Beam.

Dataflow ships this package to workers with ``--setup_file ./setup.py``.
"""

import setuptools

setuptools.setup(
    name="beam-integrated-gradients",
    version="0.1.0",
    description="Integrated Gradients attributions for every image in a dataset, on Apache Beam.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=[
            "attribution",
            "attribution.*",
            "transforms",
            "transforms.*",
            "pipeline",
            "pipeline.*",
        ]
    ),
    install_requires=[
        "apache-beam>=2.60",
        "tensorflow>=2.16",
        "tensorflow-hub>=0.16",
        "numpy>=1.26",
        "pyarrow>=14",
        "Pillow>=10",
        "matplotlib>=3.8",
        "PyYAML>=6",
        "Jinja2>=3.1",
        "google-crc32c>=1.5",  # TFRecord frame checksums (transforms/tfrecord.py)
        "scipy>=1.11",  # Blur IG's FFT blur, XRAI segment boxes
        "scikit-image>=0.22",  # XRAI's segments, mask outlines, sanity SSIM, test photos
    ],
    package_data={
        "pipeline.html": [
            "templates/*.html",
            "templates/*.css",
            "templates/*.js",
            "templates/*/*.html",
        ]
    },
    extras_require={
        "dataflow": ["apache-beam[gcp]>=2.60"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2",
            "ruff>=0.6",
            "saliency>=0.2",  # PAIR's IG: the independent oracle
        ],
    },
)
