"""Ship the real images' Inception features a profile's plan reads, as tracked fp16 files in data/fid-features/.

    .venv/bin/python tools/ship_features.py --profile cpu

A fresh clone then reads them instead of running InceptionV3 on the real images (minutes on a CPU). Each file holds
the key of the data and feature network it was made from and its own sha256; `ddpm.metrics.dataset_features` checks
both and computes the features itself when either does not match (so a changed archive is never scored against stale
features). Run it again whenever the data, the feature network or the profile's `fid_real` changes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import display_path, get_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args(argv)

    from ddpm.data import load_images
    from ddpm.metrics import InceptionFeatures, ship_features
    from ddpm.plan import build_plan

    feature = InceptionFeatures()
    for dataset, resolution, split, num_real in build_plan(get_config(args.profile, use_env=False)).reference_sets():
        data = load_images(dataset, resolution, split=split)
        path = ship_features(data, feature=feature, num_images=num_real, progress=True)
        print(f"{dataset} {resolution}px split={split} num_real={num_real}: {display_path(path)} "
              f"({path.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
