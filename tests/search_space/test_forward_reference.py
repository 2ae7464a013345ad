"""Each strategy's eval forward gives the logits it gave before its forward was rewritten for speed
(batched gathers, separable crop sampling): recorded from the earlier code (61e84ad) on fixed seeds."""

from __future__ import annotations

import pytest
import torch

from search_space import build_model, default_config

CASES = {
    "dense_cnn": {"width": 16, "stages": 4, "stem_stride": 2},
    "dense_vit": {"patch_size": 8, "embed_dim": 64, "num_heads": 4, "depth": 2},
    "sparse_topk": {
        "k_fraction": 0.04, "token_content": "patch3", "embed_dim": 64,
        "num_heads": 4, "depth": 2, "k_rule": "fixed",
    },
    "sparse_topk/top_p": {"k_fraction": 0.04, "coarse_stride": 2, "k_rule": "top_p"},
    "span_pyramid": {
        "patch_size": 4, "keep_fraction": 0.3, "window": 4,
        "embed_dim": 64, "num_heads": 4, "depth": 2, "k_rule": "fixed",
    },
    "span_pyramid/gathered": {
        "patch_size": 2, "window": 2, "global_tokens": 2,
        "stages": 3, "patch_embed": "conv", "keep_score": "learned", "k_rule": "top_p",
    },
    "tnet_traversal": {"base_resolution": 16, "regions": 2, "levels": 2, "k_rule": "fixed"},
    "tnet_traversal/resampled": {
        "base_resolution": 12, "regions": 3, "levels": 3,
        "overlap": 0.45, "encoder": "plain", "pooling": "attention", "k_rule": "fixed",
    },
}

# logits of CASES on ``images()`` as the earlier forwards computed them (6 decimals)
REFERENCE = {
    "dense_cnn": [
        [-0.011446, -0.082174, 0.038902, -0.076146, -0.062036],
        [-0.009343, -0.082584, 0.039526, -0.075366, -0.06344],
        [-0.010782, -0.083046, 0.039601, -0.076209, -0.063127],
    ],
    "dense_vit": [
        [-0.030589, 1.420695, -0.021947, -0.013903, 0.599528],
        [0.022541, 1.33993, 0.034724, 0.001339, 0.656879],
        [0.042952, 1.288478, 0.0526, 0.043168, 0.706722],
    ],
    "sparse_topk": [
        [-0.295976, -0.307838, 0.765608, 0.659466, 0.912419],
        [-0.162331, -0.213254, 0.772291, 0.734266, 0.845269],
        [-0.268214, -0.280594, 0.715911, 0.644413, 0.90543],
    ],
    "sparse_topk/top_p": [
        [-0.211862, -0.366125, 0.699758, 0.562651, 0.818334],
        [-0.19788, -0.363447, 0.730674, 0.585769, 0.801898],
        [-0.225837, -0.367196, 0.690197, 0.5743, 0.822812],
    ],
    "span_pyramid": [
        [0.285441, 0.711556, 0.447655, -0.234816, 0.15373],
        [0.316643, 0.647569, 0.415593, -0.134549, -0.013543],
        [0.341571, 0.683396, 0.506989, -0.187974, 0.085392],
    ],
    "span_pyramid/gathered": [
        [-0.540829, -0.607759, -0.619146, 0.828437, 0.081149],
        [-0.500771, -0.490994, -0.637195, 0.784948, 0.089654],
        [-0.562152, -0.58564, -0.619076, 0.829422, 0.08888],
    ],
    "tnet_traversal": [
        [-0.232654, -0.160739, 0.174425, -0.384788, -0.027908],
        [-0.17029, -0.057337, 0.129689, -0.578897, -0.079405],
        [-0.429796, 0.234414, 0.265848, -0.327786, -0.180226],
    ],
    "tnet_traversal/resampled": [
        [0.371552, -0.356607, -0.972506, -0.228747, 0.105617],
        [0.07796, -0.320731, -0.876405, -0.021117, 0.717931],
        [0.390304, -0.371715, -0.870393, -0.052076, 0.041928],
    ],
}


def images() -> torch.Tensor:
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    x[1] = x[1] * 0.2 + 0.4  # a low-contrast image: per-image rules pick another k
    return x


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_gives_the_recorded_logits(case: str) -> None:
    name = case.split("/")[0]
    torch.manual_seed(0)
    model = build_model({**default_config(name), **CASES[case]}, 3, 5, 64).eval()
    with torch.no_grad():
        logits = model(images())
    torch.testing.assert_close(logits, torch.tensor(REFERENCE[case]), rtol=0, atol=2e-5)
