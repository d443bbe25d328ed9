"""Build standard TFDS datasets as ArrayRecord files that ``tfds.data_source`` can read.

By default each dataset is downloaded and built by TFDS, which needs TensorFlow and the
internet (``pip install -e '.[prepare]'``); run it once per cluster, e.g.
``python -m dsb.data.prepare cifar10 --data_dir /shared/tfds``.

MNIST and Fashion-MNIST can instead be built offline, without TensorFlow, from their
standard IDX files (``DIR/mnist/train-images-idx3-ubyte.gz`` etc., gz or not; see
``dsb.data.idx``) into the same TFDS dataset:
``python -m dsb.data.prepare mnist fashion_mnist --from_idx ~/.cache/dsb-raw --data_dir DIR``.
"""

from __future__ import annotations

import argparse
import sys

import tensorflow_datasets as tfds

from dsb.data.registry import DATASETS


def _builder(name: str, data_dir: str | None):
    if name == "sklearn_digits":
        from dsb.data.digits import SklearnDigits

        return SklearnDigits(data_dir=data_dir, file_format="array_record")
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def main(argv: list[str] | None = None) -> None:
    names = sorted({s.tfds_name for _, s in DATASETS.items() if s.tfds_name})
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", choices=names)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument(
        "--from_idx",
        metavar="DIR",
        default=None,
        help="build mnist / fashion_mnist offline from the standard IDX files in DIR/<name>/ "
        "instead of downloading them",
    )
    args = parser.parse_args(argv)
    if args.from_idx is None:
        for name in args.names:
            builder = _builder(name, args.data_dir)
            builder.download_and_prepare()
            print(f"{name}: prepared in {builder.data_dir}")
        return

    from dsb.data import idx

    if unsupported := [n for n in args.names if n not in idx.IDX_BUILDERS]:
        parser.error(
            f"--from_idx builds {', '.join(idx.IDX_BUILDERS)}, not {', '.join(unsupported)}"
        )
    for name in args.names:
        builder = idx.idx_builder(name, args.from_idx, args.data_dir)
        try:
            builder.download_and_prepare()
        except (FileNotFoundError, idx.IdxFormatError) as e:
            sys.exit(f"error: {name}: {e}")
        print(f"{name}: prepared in {builder.data_dir}")


if __name__ == "__main__":
    main()
