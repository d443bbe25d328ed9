"""Build standard TFDS datasets as ArrayRecord files that ``tfds.data_source`` can read.

Needs TensorFlow and the internet (``pip install -e '.[prepare]'``); run it once per
cluster, e.g. ``python -m dsb.data.prepare cifar10 --data_dir /shared/tfds``.
"""

from __future__ import annotations

import argparse

import tensorflow_datasets as tfds

from dsb.data.registry import DATASETS


def main(argv: list[str] | None = None) -> None:
    names = sorted({s.tfds_name for _, s in DATASETS.items() if s.tfds_name})
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="+", choices=names)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args(argv)
    for name in args.names:
        if name == "sklearn_digits":
            from dsb.data.digits import SklearnDigits

            builder = SklearnDigits(data_dir=args.data_dir, file_format="array_record")
        else:
            builder = tfds.builder(name, data_dir=args.data_dir, file_format="array_record")
        builder.download_and_prepare()
        print(f"{name}: prepared in {builder.data_dir}")


if __name__ == "__main__":
    main()
