"""InstantStyle for Krita: style transfer with a local SDXL or SD1.5 backend.

Inside Krita this registers the docker and the "Stylize Layer" action. Outside
Krita (tests, scripts) importing the package does nothing: its Qt-free modules
(``connection``, ``session``, ``settings``, ``pixels``) are usable on their own.
"""

try:
    import krita
except ImportError:
    krita = None

if krita is not None:
    from .extension import register

    register()
