"""analysis/information.py: information per image of the embedded datasets next to the sweeps' latent sizes."""

import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analysis import information  # noqa: E402


def test_latent_sizes_are_composed_from_the_sweeps():
    lat = information.latent_sizes(sweeps=("codebook_scaling",))
    assert list(lat["total_bits"]) == [16 * b for b in (4, 8, 12, 16, 24, 32)]  # 4x4 grid at profile tiny
    assert set(lat["grid"]) == {"4x4"} and set(lat["kind"]) == {"fsq"} and set(lat["sweeps"]) == {"codebook_scaling"}


def test_dataset_table_and_markdown(tmp_path):
    data = information.dataset_information([("digits", 16), ("photo_crops", 16)], split="val", max_images=20)
    digits, photos = data.iloc[0], data.iloc[1]
    assert digits["raw_bits"] == 64 * math.log2(17) and digits["estimate_from"] == "raw"
    assert photos["raw_bits"] == 6144 and photos["estimate_bits"] < photos["raw_bits"]
    lat = pd.DataFrame({"kind": ["fsq", "ae"], "grid": ["4x4", "4x4"], "bits_per_token": [16, None],
                        "ae_channels": [None, 8], "total_bits": [256, 2048], "profile": ["tiny", "tiny"],
                        "sweeps": ["a", "b"]})
    text = information.information_markdown(data, lat)
    assert "| digits | 16 | val | 20 | 1 | 256 | 262 |" in text
    assert "1 of 2 latents are larger than the digits' 262 bits per image." in text
    assert "| fsq | 4x4 | 16 | - | 256 | a | yes | yes |" in text and "| ae | 4x4 | - | 8 | 2,048 | b | no | " in text
