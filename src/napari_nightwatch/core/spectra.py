"""Energy calibration of an XRF detector: channel <-> keV."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import NightwatchError


@dataclass(frozen=True)
class EnergyCalibration:
    """``E(ch) = offset_kev + gain_kev * ch + quadratic_kev * ch**2`` in keV.

    Parameters
    ----------
    offset_kev
        Energy of channel 0 in keV.
    gain_kev
        keV per channel; must be positive.
    quadratic_kev
        Optional quadratic term (keV per channel squared).
    """

    offset_kev: float
    gain_kev: float
    quadratic_kev: float = 0.0

    def __post_init__(self) -> None:
        for name in ("offset_kev", "gain_kev", "quadratic_kev"):
            v = getattr(self, name)
            if not np.isfinite(v):
                raise NightwatchError(f"Energy calibration {name}={v!r} is not a finite number.")
        if self.gain_kev <= 0:
            raise NightwatchError(
                f"Energy calibration gain {self.gain_kev} keV/channel must be positive."
            )
        # no fixed bound on the offset: detectors put channel 0 well below zero energy
        # (Bruker: -1.9 keV at 20 eV/channel). What physics asks is that the axis covers the
        # lines that are fitted, which needs the channel count and the lines:
        # napari_nightwatch.xrf.calibration.check_axis_covers_lines

    def range_kev(self, n_channels: int) -> tuple[float, float]:
        """Lowest and highest channel energy (keV) of an axis of ``n_channels``."""
        e = self.energies(n_channels)
        return float(e.min()), float(e.max())

    def energies(self, n_channels: int) -> np.ndarray:
        """Energy in keV of each of ``n_channels`` channels."""
        ch = np.arange(int(n_channels), dtype=np.float64)
        return self.offset_kev + self.gain_kev * ch + self.quadratic_kev * ch * ch

    def channel(self, energy_kev: float | np.ndarray) -> np.ndarray:
        """Fractional channel of an energy (inverse of :meth:`energies`)."""
        e = np.asarray(energy_kev, dtype=np.float64)
        if self.quadratic_kev == 0.0:
            return (e - self.offset_kev) / self.gain_kev
        a, b, c = self.quadratic_kev, self.gain_kev, self.offset_kev - e
        return (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> EnergyCalibration:
        return cls(float(d["offset_kev"]), float(d["gain_kev"]), float(d.get("quadratic_kev", 0.0)))
