"""Element value sets against published tables and independent recomputation (anchors.md §3.5, formats.md C2)."""

import numpy as np
import pytest
from scipy import stats

from wquant.formats import AF4_LEVELS, NF4_LEVELS, CubeRootGrid, parse_element, sf4_levels

# anchors.md §3.5 / formats.md A2.2, typed from the published tables
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
PUBLISHED_AF4 = [
    -1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0, 0.04273164,
    0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0,
]  # fmt: skip
PUBLISHED_SF4 = [
    -1.000, -0.628, -0.455, -0.334, -0.237, -0.153, -0.075, 0.000, 0.066, 0.133, 0.205, 0.284, 0.376, 0.491,
    0.657, 1.000,
]  # fmt: skip


def levels(token: str, rule: str = "absmax", block: int | None = 64) -> np.ndarray:
    return parse_element(token).codebook(rule, block).levels


def test_nf4_matches_published_table_and_normal_quantile_recipe():
    np.testing.assert_array_equal(levels("nf4"), np.array(PUBLISHED_NF4))
    offset = 0.9677083  # the QLoRA construction, recomputed independently with scipy
    pos = stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    recipe = np.sort(np.concatenate([pos, [0], neg]))
    np.testing.assert_allclose(np.array(NF4_LEVELS), recipe / recipe.max(), atol=1e-6)


def test_af4_and_sf4_match_published_tables():
    np.testing.assert_allclose(levels("af4"), PUBLISHED_AF4, atol=0)
    assert AF4_LEVELS[0] == -1.0
    np.testing.assert_allclose(np.array(sf4_levels()), PUBLISHED_SF4, atol=6e-4)


@pytest.mark.parametrize(
    "name,positive",
    [
        ("e2m1", [0, 0.5, 1, 1.5, 2, 3, 4, 6]),
        ("e2m3", list(np.arange(0, 1, 0.125)) + list(np.arange(1, 2, 0.125)) + list(np.arange(2, 4, 0.25))
         + list(np.arange(4, 7.51, 0.5))),
        ("e3m2", [0, 0.0625, 0.125, 0.1875] + [m * 2.0**e for e in range(-2, 5) for m in (1, 1.25, 1.5, 1.75)]),
    ],
)  # fmt: skip
def test_ocp_small_float_value_sets(name, positive):
    pos = np.array(sorted(positive))
    np.testing.assert_array_equal(levels(name), np.unique(np.concatenate([-pos, pos])))


@pytest.mark.parametrize(
    "name,max_value,min_normal,min_sub",
    [("e4m3", 448.0, 2.0**-6, 2.0**-9), ("e5m2", 57344.0, 2.0**-14, 2.0**-16)],
)
def test_ocp_fp8_ranges(name, max_value, min_normal, min_sub):
    lv = levels(name)
    assert lv.max() == max_value and lv.min() == -max_value
    pos = lv[lv > 0]
    assert pos.min() == min_sub
    assert min_normal in pos and min_normal - min_sub in pos  # largest subnormal sits just below min normal


def test_int_variants():
    np.testing.assert_array_equal(levels("int4"), np.arange(-7, 8))
    np.testing.assert_array_equal(levels("int4:asym"), np.arange(-8, 8))
    np.testing.assert_array_equal(levels("int4:half"), np.arange(-7.5, 8))
    np.testing.assert_array_equal(levels("uint4"), np.arange(16))
    np.testing.assert_array_equal(levels("int1"), [-1, 1])


# formats.md C2: exact outputs of the reference definitions, 4 decimals
CRD_TABLES = [
    ("crd-normal:3", "rms", None, [-2.1142, -1.3245, -0.7460, -0.2420, 0.2420, 0.7460, 1.3245, 2.1142]),
    ("crd-normal:3:asym", "rms", None, [-1.9925, -1.1683, -0.5519, 0.0, 0.4388, 0.9083, 1.4577, 2.2197]),
    ("crd-laplace:3", "rms", None, [-3.1906, -1.7202, -0.8601, -0.2499, 0.2499, 0.8601, 1.7202, 3.1906]),
    ("crd-t7:3", "rms", None, [-3.2945, -1.7118, -0.8918, -0.2803, 0.2803, 0.8918, 1.7118, 3.2945]),
    ("crd-normal:3", "absmax", 64, [-1.0, -0.5970, -0.3315, -0.1070, 0.1070, 0.3315, 0.5970, 1.0]),
    ("crd-normal:3:asym", "absmax", 64, [-1.0, -0.5477, -0.2540, 0.0, 0.1887, 0.3923, 0.6361, 1.0]),
    ("crd-normal:3:asym", "signmax", 64, [-0.6361, -0.3923, -0.1887, 0.0, 0.1887, 0.3923, 0.6361, 1.0]),
    ("crd-laplace:4", "absmax", 64, [-1, -0.7376, -0.5527, -0.4097, -0.2931, -0.1947, -0.1095, -0.0344,
                                     0.0344, 0.1095, 0.1947, 0.2931, 0.4097, 0.5527, 0.7376, 1]),
    ("crd-t7:4", "absmax", 64, [-1, -0.7380, -0.5605, -0.4249, -0.3131, -0.2154, -0.1263, -0.0416,
                                0.0416, 0.1263, 0.2154, 0.3131, 0.4249, 0.5605, 0.7380, 1]),
    ("crd-normal:4", "absmax", 64, [-1.0, -0.78008, -0.61761, -0.48273, -0.36358, -0.25403, -0.15032, -0.04977,
                                    0.04977, 0.15032, 0.25403, 0.36358, 0.48273, 0.61761, 0.78008, 1.0]),
    ("crd-normal:4:p1", "rms", None, [-1.5647, -1.1868, -0.9289, -0.7215, -0.5414, -0.3774, -0.2230, -0.0738,
                                      0.0738, 0.2230, 0.3774, 0.5414, 0.7215, 0.9289, 1.1868, 1.5647]),
]  # fmt: skip


@pytest.mark.parametrize("token,rule,block,expected", CRD_TABLES)
def test_cube_root_codebooks_match_reference(token, rule, block, expected):
    np.testing.assert_allclose(levels(token, rule, block), expected, atol=1.5e-4)


def test_crd_normal_4_is_normal_quantiles_with_variance_3():
    expected = stats.norm.ppf(np.linspace(0, 1, 18)[1:-1], scale=np.sqrt(3))
    np.testing.assert_allclose(CubeRootGrid("normal", 4).codebook("rms").levels, expected, rtol=1e-12)
