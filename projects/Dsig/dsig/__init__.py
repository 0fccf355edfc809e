"""Dsig: deep structured instance graph distillation of object detectors (ICCV 2021).

Importing the package registers the ``Dsig`` distiller (config node ``DSIG.*``).
"""

from dsig.distiller import Dsig

__all__ = ["Dsig"]
