"""Interactive widgets that know about the website.

In Jupyter or Colab, :func:`interactive` shows ipywidgets sliders bound to a plotting function.
During the site build (no kernel will be there to answer the sliders) it shows nothing but a
one-line note: each chapter follows every widget with its *static twin*, small multiples of the
same function at a few slider settings, which the website shows instead.
"""

from __future__ import annotations

from collections.abc import Callable

from .runtime import in_site_build


def interactive(fn: Callable, **sliders):
    """``ipywidgets.interact(fn, **sliders)`` in a live notebook; a note during the site build.

    Args:
        fn: draws one figure for the given keyword values.
        **sliders: ipywidgets abbreviations, e.g. ``w1=(-3.0, 3.0, 0.1)``.

    Returns:
        The ipywidgets interactive object, or None during the site build.
    """
    if in_site_build():
        print("(An interactive widget appears here when the notebook runs in Jupyter or Colab; "
              "the figure below shows the same function at several settings.)")
        return None
    import ipywidgets

    return ipywidgets.interact(fn, **sliders)
