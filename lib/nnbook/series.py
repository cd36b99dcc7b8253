"""Real time series shipped inside statsmodels (no download): yearly sunspots and Mauna Loa CO2.

Each loader checks a SHA-256 of the values it returns, so a chapter's numbers cannot drift
silently if a statsmodels release ever changed a data file.
"""

from __future__ import annotations

import hashlib

import numpy as np

SUNSPOTS_SHA256 = "66c86ecdcd5950f61f6243f924fdfa10a44596e94816291062fdda266a31c86d"
CO2_SHA256 = "cc924733d2b891a5eaa305f179b974ff8cd414721a4451ff29d3eba7021ec998"


def _check(name: str, values: np.ndarray, expected: str) -> None:
    got = hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()
    if got != expected:
        raise ValueError(f"{name} from statsmodels has SHA-256 {got}, expected {expected}; "
                         "the installed statsmodels ships different data than the book expects")


def sunspots() -> tuple[np.ndarray, np.ndarray]:
    """Yearly mean sunspot numbers, 1700-2008 (309 values).

    Returns:
        ``(years, values)``, both float64 arrays of shape ``(309,)``.
    """
    from statsmodels.datasets import sunspots as source

    df = source.load_pandas().data
    years, values = df["YEAR"].to_numpy(float), df["SUNACTIVITY"].to_numpy(float)
    _check("sunspots", values, SUNSPOTS_SHA256)
    return years, values


def co2() -> tuple[np.ndarray, np.ndarray]:
    """Monthly mean atmospheric CO2 at Mauna Loa (ppm), March 1958 - December 2001.

    statsmodels ships weekly readings with gaps; this takes monthly means and fills the few
    empty months by linear interpolation.

    Returns:
        ``(t, ppm)``: decimal years and ppm, float64 arrays of the same length.
    """
    from statsmodels.datasets import co2 as source

    weekly = source.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate("linear")
    t = (monthly.index.year + (monthly.index.month - 1) / 12).to_numpy(float)
    values = monthly.to_numpy(float)
    _check("co2", values, CO2_SHA256)
    return t, values
