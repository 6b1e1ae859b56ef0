"""Public helpers for users' own tests: the provider emulator, with faults, in a background thread.

from sluice.testing import running_emulator

with running_emulator() as emu:
    base = emu.base_url("deepseek")   # point a provider preset's base_url here
"""

from sluice.emulator import Emulator, running_emulator
from sluice.emulator.faults import Faults, parse_spec

__all__ = ["Emulator", "Faults", "parse_spec", "running_emulator"]
